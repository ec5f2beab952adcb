"""Progressive fusion (Shankar et al. 2022, "Progressive Fusion for Multimodal Integration").

Fusion happens at several depths: modality features are projected (early), then at every stage a gate pools
the modality streams into a fused state, which is fed back into each stream before the next stage (the
paper's backward connections); finally a decision-level gate combines the fused decision with one decision per
modality. The per-modality decisions are read from the streams *before* any feedback, so they stay truly
unimodal: when one modality misleads the fused state (e.g. speech of a speaker never seen in training), the
decision gate still has an uncontaminated decision of every other modality to fall back on.

With ``decision_gate_inputs="confidence"`` the decision gate reads only the decisions (log-probabilities and
entropy of each), not the stream states, so it can be fitted afterwards on decisions of other models: the
out-of-fold decisions of cross-fitting (fusion/tasks/cross_fit.py).
"""

from __future__ import annotations

import torch
from torch import nn

from fusion.errors import ConfigError
from fusion.fusions.base import Fusion, FusionResult, drop_absent, named_weights
from fusion.fusions.gating import ModalityGate, presence
from fusion.fusions.late import confidence_features

FUSED = "~fused"  # name of the fused decision among the decision gate's inputs (sorts after modalities)


class ProgressiveFusion(Fusion):
    """Gated multi-stage fusion with feedback of the fused state into the modality streams.

    Args:
        modality_dims: modality -> pooled feature size.
        num_classes: output classes.
        hidden_dim: width of every stream and of the fused state.
        num_stages: fusion stages (each: gate -> fused state; between stages: feedback -> stream block).
        dropout: dropout inside stream blocks.
        gate: keyword arguments of every ModalityGate.
        decision_gate_inputs: "states" (stream state + decision confidence per decision) or "confidence"
            (decision confidence only; needed to fit the gate on out-of-fold decisions).
        decision_mixing: "logp" (gate-weighted sum of log-probabilities, a product of experts) or "prob"
            (log of the gate-weighted sum of probabilities, a mixture of experts: one confidently wrong decision
            moves the result by at most its weight).
    """

    def __init__(self, modality_dims: dict[str, int], num_classes: int, hidden_dim: int = 128, num_stages: int = 2,
                 dropout: float = 0.1, gate: dict | None = None, decision_gate_inputs: str = "states",
                 decision_mixing: str = "logp"):
        super().__init__()
        if decision_gate_inputs not in ("states", "confidence"):
            raise ConfigError(f"decision_gate_inputs must be 'states' or 'confidence', got {decision_gate_inputs!r}")
        if decision_mixing not in ("logp", "prob"):
            raise ConfigError(f"decision_mixing must be 'logp' or 'prob', got {decision_mixing!r}")
        self.decision_gate_inputs, self.decision_mixing = decision_gate_inputs, decision_mixing
        gate = gate or {}
        self.modalities = sorted(modality_dims)
        h = hidden_dim
        self.inputs = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, h), nn.LayerNorm(h), nn.GELU()) for m, d in modality_dims.items()})
        self.stage_gates = nn.ModuleList(ModalityGate({m: h for m in self.modalities}, **gate) for _ in range(num_stages))
        self.fusers = nn.ModuleList(nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, h)) for _ in range(num_stages))
        if num_stages < 1:
            raise ConfigError(f"num_stages must be >= 1, got {num_stages}")
        self.feedback = nn.ModuleList(nn.ModuleDict({m: nn.Linear(h, h) for m in self.modalities}) for _ in range(num_stages - 1))
        self.blocks = nn.ModuleList(
            nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(h), nn.Linear(h, 2 * h), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * h, h))
                           for m in self.modalities})
            for _ in range(num_stages - 1))
        self.heads = nn.ModuleDict({m: nn.Linear(h, num_classes) for m in self.modalities})
        self.fused_head = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, num_classes))
        state_dim = h if decision_gate_inputs == "states" else 0
        self.decision_gate = ModalityGate({m: state_dim + num_classes + 1 for m in [*self.modalities, FUSED]}, **gate)

    def fuse(self, features: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]) -> FusionResult:
        present = presence(mask, self.modalities)  # (B, M)
        features = drop_absent(features, mask, self.modalities)
        unimodal_states = {m: self.inputs[m](features[m]) for m in self.modalities}  # m -> (B, H)
        streams = unimodal_states
        fused = None
        gate_weights, reg = {}, present.new_zeros((), dtype=streams[self.modalities[0]].dtype)
        for s in range(len(self.stage_gates)):
            weights, stage_reg = self.stage_gates[s](streams, mask)  # (B, M)
            pooled = sum(weights[:, i : i + 1] * streams[m] for i, m in enumerate(self.modalities))  # (B, H)
            update = self.fusers[s](pooled)  # (B, H)
            fused = update if fused is None else fused + update
            if s < len(self.blocks):  # feed the fused state back into every stream before the next stage
                streams = {m: streams[m] + self.blocks[s][m](streams[m] + self.feedback[s][m](fused)) for m in self.modalities}
            gate_weights.update(named_weights(f"stage{s + 1}", self.modalities, weights))
            reg = reg + stage_reg
        decisions = {m: self.heads[m](unimodal_states[m]) for m in self.modalities}  # m -> (B, K), no feedback in them
        decisions[FUSED] = self.fused_head(fused)  # (B, K)
        states = {**unimodal_states, FUSED: fused}
        decision_mask = {**mask, FUSED: torch.ones_like(mask[self.modalities[0]], dtype=torch.bool)}
        logits, weights, decision_reg = self._decide(decisions, decision_mask, states)
        names = self.decision_gate.modalities
        gate_weights.update(named_weights("decision", [n.replace(FUSED, "fused") for n in names], weights))
        unimodal = {m: decisions[m] for m in self.modalities}
        return FusionResult(logits, gate_weights, reg + decision_reg, unimodal, decisions)

    def _decide(self, decisions: dict[str, torch.Tensor], mask: dict[str, torch.Tensor],
                states: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gate-weighted combination of the decisions (see `decision_mixing`): logits (B, K), weights (B, M + 1), gate loss."""
        gate_in = {m: confidence_features(decisions[m]) for m in decisions}  # m -> (B, K + 1)
        if self.decision_gate_inputs == "states":
            gate_in = {m: torch.cat([states[m], gate_in[m]], dim=1) for m in decisions}
        weights, decision_reg = self.decision_gate(gate_in, mask)  # (B, M + 1)
        logp = torch.stack([torch.log_softmax(decisions[m], dim=1) for m in self.decision_gate.modalities], dim=1)  # (B, M + 1, K)
        if self.decision_mixing == "prob":  # log sum_m w_m p_m; an absent decision's weight 0 stays ~0, no NaN grads
            log_weights = torch.log(weights.float().clamp_min(1e-30)).unsqueeze(-1)  # (B, M + 1, 1)
            mixed = torch.logsumexp(log_weights + logp.float(), dim=1).to(logp.dtype)  # (B, K)
        else:
            mixed = (weights.unsqueeze(-1) * logp).sum(dim=1)  # (B, K)
        return mixed, weights, decision_reg

    def decision_gate_module(self) -> nn.Module | None:
        return self.decision_gate if self.decision_gate_inputs == "confidence" else None

    def combine_decisions(self, decisions: dict[str, torch.Tensor],
                          mask: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.decision_gate_inputs != "confidence":
            raise ValueError("combining stored decisions needs model.fusion.decision_gate_inputs=confidence "
                             "(the 'states' gate also reads stream features)")
        logits, _, reg = self._decide(decisions, mask, None)
        return logits, reg
