"""MixStyle: training-time mixing of per-channel feature statistics between the samples of a batch.

The mean and standard deviation of a convolutional feature map over its positions carry much of a sample's
"style" (for speech: the speaker's voice and the recording channel), its normalised values the content. Mixing
the statistics of two samples makes a new style with the same content, so a tower trained on a few speakers
sees many more voices (Zhou et al., "Domain Generalization with MixStyle", ICLR 2021). Drawn per sample on the
device (no host synchronisation: it runs inside a captured CUDA graph); identity in evaluation mode.
"""

from __future__ import annotations

import torch
from torch import nn


class MixStyle(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): in training, a share `p` of the samples get the statistics
    lam * own + (1 - lam) * another sample's, lam ~ Beta(alpha, alpha) per sample.

    Args:
        p: probability that a sample's statistics are mixed (0 turns it off).
        alpha: Beta concentration; small values keep lam near 0 or 1 (mostly one sample's style).
        eps: added to the variance.
    """

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"MixStyle p must be in [0, 1], got {p}")
        if alpha <= 0:
            raise ValueError(f"MixStyle alpha must be > 0, got {alpha}")
        self.p, self.alpha, self.eps = p, alpha, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.shape[0] < 2:
            return x
        b = x.shape[0]
        mean = x.mean(dim=(2, 3), keepdim=True).detach()  # (B, C, 1, 1)
        std = (x.var(dim=(2, 3), keepdim=True) + self.eps).sqrt().detach()  # (B, C, 1, 1)
        content = (x - mean) / std
        concentration = torch.full((2, b), self.alpha, device=x.device, dtype=torch.float32)
        draws = torch._standard_gamma(concentration)  # (2, B): lam = g1 / (g1 + g2) ~ Beta(alpha, alpha)
        lam = (draws[0] / (draws[0] + draws[1])).nan_to_num(0.5).to(x.dtype).view(b, 1, 1, 1)
        partner = torch.rand(b, device=x.device).argsort()  # a random permutation, drawn on the device
        mixed = content * (lam * std + (1 - lam) * std[partner]) + lam * mean + (1 - lam) * mean[partner]
        chosen = (torch.rand(b, device=x.device) < self.p).view(b, 1, 1, 1)
        return torch.where(chosen, mixed, x)
