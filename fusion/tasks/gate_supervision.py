"""Gate supervision: the last gate learns to weigh each input by how likely that input's decision is to be right.

Trained by the fused loss alone, a gate has no reason to move away from a modality whose decision is still right
most of the time (noisy digits stay readable), and it learns nothing from a modality's share of the blame on
the rows where it is wrong. Here the gate is also pulled towards a target computed from the label: per sample,
the softmax over the gate's present inputs of each input's own log-probability of the true label (detached).
A modality whose own decision grows less sure of the label (noise, occlusion, a voice never heard) is pulled
towards less weight, in proportion; on rows where every decision is sure, towards equal weights. This is the
ordering that quality-aware fusion asks of its weights (weights rank like the modalities' confidence in the
label), learned from corrupted training rows as well as clean ones. Its cross-entropy also keeps a gradient
where the gate's softmax has saturated on one input: without it, progressive fusion's decision gate could
collapse onto the image decision for good (benchmarks/robustness/README.md).
"""

from __future__ import annotations

import torch

from fusion.fusions.base import FusionResult

FUSED_GATE_NAME, FUSED_DECISION = "fused", "~fused"


def last_gate_decisions(result: FusionResult) -> dict[str, torch.Tensor] | None:
    """Gate name -> the decision logits (B, K) that gate input stands for, for the fusion's last gate (the
    decision gate of late and progressive fusion, the feature gate of early fusion); None if a weighted input
    has no decision of its own."""
    if not result.gate_weights:
        return None
    last_stage = list(result.gate_weights)[-1].split("/")[0]
    decisions = {}
    for name in result.gate_weights:
        stage, source = name.split("/", 1)
        if stage != last_stage:
            continue
        key = FUSED_DECISION if source == FUSED_GATE_NAME else source
        logits = result.decision_logits.get(key, result.unimodal_logits.get(key))
        if logits is None:
            return None
        decisions[name] = logits
    return decisions


def gate_supervision_loss(result: FusionResult, labels: torch.Tensor, mask: dict[str, torch.Tensor],
                          temperature: float = 1.0) -> torch.Tensor:
    """Mean over samples of the cross-entropy between the last gate's weights (B, G) and the target
    softmax_g(log p_g(label) / temperature) over the present inputs (``mask``: modality -> (B,) bool, what the
    fusion saw; the fused decision is always present). A scalar, 0 for fusions without such a gate."""
    decisions = last_gate_decisions(result)
    if not decisions:
        return result.logits.new_zeros(())
    names = list(decisions)
    weights = torch.stack([result.gate_weights[n] for n in names], dim=1).float()  # (B, G)
    true_logp = torch.stack([torch.log_softmax(decisions[n].detach().float(), dim=1).gather(1, labels[:, None])[:, 0]
                             for n in names], dim=1)  # (B, G)
    present = torch.stack([mask[n.split("/", 1)[1]].bool() if n.split("/", 1)[1] in mask
                           else torch.ones_like(labels, dtype=torch.bool) for n in names], dim=1)  # (B, G)
    target = torch.softmax(true_logp.masked_fill(~present, float("-inf")) / temperature, dim=1)  # (B, G), 0 if absent
    return -(target * torch.log(weights.clamp_min(1e-8))).sum(dim=1).mean()
