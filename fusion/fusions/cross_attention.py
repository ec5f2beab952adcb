"""Cross-attention fusion: image regions, words and audio frames attend to each other before anything is pooled.

Co-attention blocks as in ViLBERT (Lu et al. 2019, "ViLBERT: Pretraining Task-Agnostic Visiolinguistic
Representations") and ALBEF (Li et al. 2021, "Align before Fuse"): every modality keeps a token stream; in each
block a stream attends to itself, then to the tokens of every other present modality (image regions attend to
words and sounds, words to regions and sounds, ...), then an MLP. The image tokens of the encoder's last feature
map are joined by average-pooled copies of it (a simple feature pyramid, Li et al. 2022, "Exploring Plain Vision
Transformer Backbones"), every token with the 2-D position of its centre, so a word can match one region or a
whole quadrant. Each stream is pooled by its own [CLS] token and the ModalityGate weighs the pooled streams. Every modality also gets a decision from its own tokens before any
cross-attention (`unimodal_logits`, trained by the task's per-modality loss); with `decision_gate`, a second gate
mixes those decisions with the fused one, as the last stage of progressive fusion does.

Absent modalities and text padding are key padding: they get exactly zero attention and are never zero-filled
into a softmax; a sample with only one modality attends to itself (its cross-attention adds nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fusion.errors import ConfigError
from fusion.fusions.base import Fusion, FusionResult, named_weights
from fusion.fusions.gating import ModalityGate, presence
from fusion.fusions.late import confidence_features
from fusion.fusions.progressive import FUSED

FREQUENCIES = 8  # sin/cos frequencies per coordinate of the token positions


@dataclass
class CrossAttentionResult(FusionResult):
    """FusionResult plus the cross-attention of every block: "<query>-><key>" -> (B, heads, 1 + T_q, 1 + T_k)
    (token 0 of each stream is its [CLS]); and the image token layout: [(rows, cols)] per pyramid level."""

    attention: list[dict[str, torch.Tensor]] = field(default_factory=list)
    image_grids: list[tuple[int, int]] = field(default_factory=list)


class MaskedAttention(nn.Module):
    """Multi-head attention with exactly zero weight on invalid keys; a query without valid keys returns zeros.

    Queries and keys are layer-normalised per head (QK-norm, Dehghani et al. 2023, "Scaling Vision Transformers to
    22 Billion Parameters"): without it the attention logits of these small from-scratch models grew until the
    attention was one-hot and training stalled at chance (benchmarks/xattn/README.md).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"model.fusion.hidden_dim={dim} must be divisible by num_heads={heads}")
        self.heads = heads
        self.query, self.key_value, self.out = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.query_norm, self.key_norm = nn.LayerNorm(dim // heads), nn.LayerNorm(dim // heads)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, Tq, H) attends to context (B, Tk, H) where valid (B, Tk); returns (B, Tq, H) and weights (B, h, Tq, Tk)."""
        b, tq, dim = x.shape
        q = self.query_norm(self.query(x).view(b, tq, self.heads, -1).transpose(1, 2))  # (B, h, Tq, d)
        k, v = self.key_value(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)  # (B, h, Tk, d)
        k = self.key_norm(k)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, h, Tq, Tk)
        keep = valid[:, None, None, :]  # (B, 1, 1, Tk)
        weights = torch.softmax(scores.masked_fill(~keep, torch.finfo(scores.dtype).min), dim=-1) * keep
        out = (self.dropout(weights) @ v).transpose(1, 2).reshape(b, tq, dim)  # (B, Tq, H)
        return self.out(out), weights


class CoAttentionBlock(nn.Module):
    """Per modality: self-attention, cross-attention to the other modalities' tokens, MLP (pre-norm, residual)."""

    def __init__(self, modalities: list[str], dim: int, heads: int, dropout: float):
        super().__init__()
        self.modalities = modalities
        each = lambda make: nn.ModuleDict({m: make() for m in modalities})  # noqa: E731
        self.norm_self, self.norm_cross, self.norm_mlp = (each(lambda: nn.LayerNorm(dim)) for _ in range(3))
        self.self_attention = each(lambda: MaskedAttention(dim, heads, dropout))
        self.cross_attention = each(lambda: MaskedAttention(dim, heads, dropout)) if len(modalities) > 1 else None
        self.mlp = each(lambda: nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)))

    def forward(self, streams: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                shared: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """streams m -> (B, 1 + T_m, H) ([CLS] first); `own` m -> (B, 1 + T_m) keys a stream sees of itself,
        `shared` the keys others see."""
        attention = {}
        for m in self.modalities:
            x = self.norm_self[m](streams[m])
            streams[m] = streams[m] + self.self_attention[m](x, x, own[m])[0]
        if self.cross_attention is not None:
            normed = {m: self.norm_cross[m](streams[m]) for m in self.modalities}
            updates = {}
            for m in self.modalities:
                others = [o for o in self.modalities if o != m]
                context = torch.cat([normed[o] for o in others], dim=1)  # (B, sum T_o, H)
                updates[m], weights = self.cross_attention[m](normed[m], context, torch.cat([shared[o] for o in others], 1))
                for o, part in zip(others, weights.split([normed[o].shape[1] for o in others], dim=-1), strict=True):
                    attention[f"{m}->{o}"] = part  # (B, h, T_m, T_o)
            streams = {m: streams[m] + updates[m] for m in self.modalities}
        return {m: streams[m] + self.mlp[m](self.norm_mlp[m](streams[m])) for m in self.modalities}, attention


class CrossAttentionFusion(Fusion):
    """Co-attention over the tokens of every modality, [CLS] pooling per modality, gated sum, MLP head.

    `fuse(features, mask, token_mask)`: features m -> tokens (B, T_m, D_m) (a pooled (B, D_m) is one token),
    mask m -> (B,) presence, token_mask m -> (B, T_m) valid tokens (text padding; default all valid).

    Args:
        modality_dims: modality -> token feature size.
        num_classes: output classes.
        hidden_dim: width of every token stream.
        num_layers: co-attention blocks.
        num_heads: attention heads (must divide hidden_dim).
        dropout: dropout on attention weights and in the MLPs.
        image_scales: pooling factors of the image token pyramid (1 = the encoder's map itself, 2 = half its
            side, ...); every level is attended to at once.
        grid_modality: the modality whose tokens are a square feature map (pyramid and 2-D positions); other
            modalities' tokens are sequences (1-D positions).
        block_lr_scale: learning rate of the co-attention blocks relative to the task's (attention trained from
            scratch needs a lower rate than the encoders; 1 = the same).
        decision_gate: mix the fused decision with the per-modality ones (gate over their confidences, product of
            experts); off: the fused decision alone.
        gate: keyword arguments of ModalityGate.
    """

    needs_tokens = True  # FusionModel passes encoder tokens (forward_tokens) instead of pooled features

    def __init__(self, modality_dims: dict[str, int], num_classes: int, hidden_dim: int = 128, num_layers: int = 2,
                 num_heads: int = 4, dropout: float = 0.1, image_scales: list[int] = (1, 2, 4),
                 grid_modality: str = "image", block_lr_scale: float = 1.0, decision_gate: bool = False,
                 gate: dict | None = None):
        super().__init__()
        if block_lr_scale <= 0:
            raise ConfigError(f"model.fusion.block_lr_scale must be > 0, got {block_lr_scale}")
        self.block_lr_scale = block_lr_scale
        self.scales = tuple(int(s) for s in image_scales)
        if not self.scales or min(self.scales) < 1 or num_layers < 1:
            raise ConfigError(f"model.fusion: need image_scales >= 1 and num_layers >= 1, got {list(self.scales)}, {num_layers}")
        self.modalities, self.grid_modality, h = sorted(modality_dims), grid_modality, hidden_dim
        self.inputs = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, h), nn.LayerNorm(h)) for m, d in modality_dims.items()})
        self.positions = nn.ModuleDict({m: nn.Linear(4 * FREQUENCIES, h) for m in self.modalities})
        self.scale_embedding = nn.Parameter(0.02 * torch.randn(len(self.scales), h))  # (S, H)
        self.cls = nn.Parameter(0.02 * torch.randn(len(self.modalities), h))  # (M, H)
        self.blocks = nn.ModuleList(CoAttentionBlock(self.modalities, h, num_heads, dropout) for _ in range(num_layers))
        self.norm = nn.ModuleDict({m: nn.LayerNorm(h) for m in self.modalities})
        self.gate = ModalityGate({m: h for m in self.modalities}, **(gate or {}))
        self.head = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Dropout(dropout), nn.Linear(h, num_classes))
        self.unimodal = nn.ModuleDict({m: nn.Linear(h, num_classes) for m in self.modalities})
        self.decision_gate = ModalityGate({m: num_classes + 1 for m in [*self.modalities, FUSED]}, **(gate or {})) \
            if decision_gate else None

    def fuse(self, features: dict[str, torch.Tensor], mask: dict[str, torch.Tensor],
             token_mask: dict[str, torch.Tensor] | None = None) -> CrossAttentionResult:
        present = presence(mask, self.modalities)  # (B, M); no host check while captured or compiled
        streams, own, shared, grids, decisions = {}, {}, {}, [], {}
        for i, m in enumerate(self.modalities):
            tokens = features[m] if features[m].dim() == 3 else features[m].unsqueeze(1)  # (B, T, D)
            valid = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
            if token_mask is not None and m in token_mask:
                valid = token_mask[m].bool()
            valid = valid & present[:, i : i + 1]  # (B, T)
            tokens = torch.where(valid.unsqueeze(-1), tokens, torch.zeros_like(tokens))  # absent / padding: no NaN leaks
            x, valid, layout = self._embed(m, tokens, valid)  # (B, T', H), (B, T')
            grids = layout if m == self.grid_modality else grids
            mean = (x * valid.unsqueeze(-1)).sum(1) / valid.sum(1, keepdim=True).clamp_min(1)  # (B, H) valid tokens
            decisions[m] = self.unimodal[m](mean)  # (B, K) from this modality alone
            one = torch.ones_like(valid[:, :1])
            streams[m] = torch.cat([self.cls[i].expand(x.shape[0], 1, -1), x], dim=1)  # (B, 1 + T', H)
            own[m] = torch.cat([one, valid], dim=1)  # a stream always sees its own [CLS]
            shared[m] = torch.cat([present[:, i : i + 1], valid], dim=1)  # others see nothing of an absent modality
        attention = []
        for block in self.blocks:
            streams, weights = block(streams, own, shared)
            attention.append(weights)
        pooled = {m: self.norm[m](streams[m][:, 0]) for m in self.modalities}  # m -> (B, H)
        weights, reg = self.gate(pooled, mask)  # (B, M)
        fused = sum(weights[:, i : i + 1] * pooled[m] for i, m in enumerate(self.modalities))  # (B, H)
        logits, gate_weights, unimodal = self.head(fused), named_weights("cross", self.modalities, weights), dict(decisions)
        if self.decision_gate is not None:  # (B, M + 1) weights over the modality decisions and the fused one
            decisions[FUSED] = logits
            names = self.decision_gate.modalities
            decision_weights, decision_reg = self.decision_gate({d: confidence_features(decisions[d]) for d in names},
                                                                {**mask, FUSED: torch.ones_like(present[:, 0])})
            logp = torch.stack([torch.log_softmax(decisions[d], dim=1) for d in names], dim=1)  # (B, M + 1, K)
            logits, reg = (decision_weights.unsqueeze(-1) * logp).sum(dim=1), reg + decision_reg
            gate_weights.update(named_weights("decision", [d.replace(FUSED, "fused") for d in names], decision_weights))
        return CrossAttentionResult(logits, gate_weights, reg, unimodal, decisions if self.decision_gate is not None else {},
                                    attention=attention, image_grids=grids)

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers of the co-attention blocks' parameters (names relative to this module)."""
        if self.block_lr_scale == 1.0:
            return {}
        return {f"blocks.{name}": self.block_lr_scale for name, _ in self.blocks.named_parameters()}

    def _embed(self, m: str, tokens: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Projected tokens with positions, their valid mask and the grid layout: the grid modality as a pyramid of
        square maps, others as sequences."""
        x = self.inputs[m](tokens)  # (B, T, H)
        b, t, h = x.shape
        side = math.isqrt(t)
        if m != self.grid_modality or side * side != t:
            coords = torch.stack([(torch.arange(t, device=x.device) + 0.5) / t, torch.full((t,), 0.5, device=x.device)], 1)
            return x + self.positions[m](fourier(coords.to(x.dtype))), valid, [(1, t)]
        fmap = x.transpose(1, 2).reshape(b, h, side, side)  # (B, H, S, S)
        levels, layout = [], []
        for s, factor in enumerate(self.scales):
            pooled = F.adaptive_avg_pool2d(fmap, max(1, side // factor))  # (B, H, r, r)
            r = pooled.shape[-1]
            position = self.positions[m](fourier(grid_centres(r, r, x.device).to(x.dtype)))  # (r*r, H)
            levels.append(pooled.flatten(2).transpose(1, 2) + position + self.scale_embedding[s])  # (B, r*r, H)
            layout.append((r, r))
        x = torch.cat(levels, dim=1)  # (B, sum r*r, H)
        return x, valid[:, :1].expand(b, x.shape[1]), layout


def grid_centres(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """Centres (y, x) in [0, 1] of a rows x cols grid, row-major: (rows * cols, 2)."""
    y = (torch.arange(rows, device=device) + 0.5) / rows
    x = (torch.arange(cols, device=device) + 0.5) / cols
    return torch.stack(torch.meshgrid(y, x, indexing="ij"), dim=-1).reshape(-1, 2)


def fourier(coords: torch.Tensor) -> torch.Tensor:
    """Coordinates (T, 2) in [0, 1] -> sin/cos features (T, 4 * FREQUENCIES)."""
    angles = coords[:, :, None] * (math.pi * torch.arange(1, FREQUENCIES + 1, device=coords.device, dtype=coords.dtype))
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (T, 2 * 2F)
