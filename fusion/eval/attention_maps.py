"""Cross-attention as pictures: where on the image each word (or the sound) of an example looked.

`region_attention` turns the "<query>->image" attention of a CrossAttentionResult into one map per query token over
the finest image grid: every pyramid level is spread back onto the regions it pools, so a map sums to the share
of attention the token gave the image. `word_spans` finds the tokens of each word, and `draw_attention` writes
the image with one overlay per word as a PNG (fusion/inference/attention.py does this for `predict.py
attention_maps=N`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def region_attention(attention: list[dict[str, torch.Tensor]], grids: list[tuple[int, int]], query: str,
                     block: int = -1) -> torch.Tensor:
    """Attention of every `query` token over the image regions, mean over heads: (B, 1 + T_q, R, C) on the finest
    (R, C) grid of `grids`; token 0 is the query stream's [CLS], the one the fused decision is read from."""
    weights = attention[block][f"{query}->image"].float().mean(dim=1)[..., 1:]  # (B, 1 + Tq, N), image [CLS] dropped
    rows, cols = max(grids, key=lambda g: g[0] * g[1])
    b, t, _ = weights.shape
    total = weights.new_zeros(b, t, rows, cols)
    for part, (r, c) in zip(weights.split([r * c for r, c in grids], dim=-1), grids, strict=True):
        level = F.interpolate(part.reshape(b * t, 1, r, c), size=(rows, cols), mode="nearest")  # (B*Tq, 1, R, C)
        total += level.view(b, t, rows, cols) * (r * c) / (rows * cols)  # spread, keeping each level's mass
    return total


def word_spans(text: str, tokenizer, max_length: int) -> list[tuple[str, list[int]]]:
    """Words of `text` and the positions of their tokens in the tokenizer's output (at most `max_length`)."""
    words = [(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is None:  # the built-in byte tokenizer: [CLS], one token per UTF-8 byte, [SEP]
        spans = [(w, len(text[:s].encode()), len(text[:e].encode())) for w, s, e in words]
        return [(w, [1 + i for i in range(s, e) if 1 + i < max_length - 1]) for w, s, e in spans]
    offsets = inner(text, truncation=True, max_length=max_length, return_offsets_mapping=True)["offset_mapping"]
    return [(w, [i for i, (a, z) in enumerate(offsets) if z > a and s <= a < e]) for w, s, e in words]


def draw_attention(image: np.ndarray, maps: list[tuple[str, np.ndarray]], title: str, path: str | Path) -> Path:
    """Writes `image` ((H, W) or (H, W, 3) in [0, 1]) and one overlay per (name, (R, C) map) side by side as a PNG.

    Each overlay is scaled to its own maximum; its title gives the share of attention on the image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    h, w = shown.shape[:2]
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(1.7 * (1 + len(maps)), 2.1), squeeze=False)
    axes[0, 0].imshow(shown, interpolation="nearest")
    axes[0, 0].set_title("input", fontsize=8)
    for ax, (name, heat) in zip(axes[0, 1:], maps, strict=True):
        ax.imshow(shown, interpolation="nearest")
        ax.imshow(heat / max(float(heat.max()), 1e-9), cmap="inferno", alpha=0.6, vmin=0, vmax=1,
                  extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="bilinear")
        ax.set_title(f"{name} ({heat.sum():.2f})", fontsize=8)
    for ax in axes[0]:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
