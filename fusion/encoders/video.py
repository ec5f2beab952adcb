"""Mouth-region video encoder: a small per-frame CNN followed by a bidirectional LSTM.

In the spirit of the visual stream of SyncNet (Chung & Zisserman, ACCV 2016 workshops) and lip-reading front
ends, scaled down for small grayscale crops. Each frame is fed together with its difference to the previous
frame, so the CNN sees appearance and motion.
"""

from __future__ import annotations

import torch
from torch import nn


class VideoEncoder(nn.Module):
    """Encodes mouth crops (B, T, h, w) into per-frame tokens (B, T, D) or a pooled (B, D) vector.

    Args:
        crop_size: side of the square input crops (a multiple of 8).
        channels: CNN widths (patch embedding, then the two 3x3 convolutions).
        frame_dim: per-frame CNN feature size.
        hidden_dim: LSTM hidden size per direction.
        out_dim: token size D.
        dropout: dropout before the output projection.
    """

    def __init__(self, crop_size: int = 32, channels: tuple[int, int] = (16, 32), frame_dim: int = 128,
                 hidden_dim: int = 64, out_dim: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        if crop_size % 8:
            raise ValueError(f"crop_size must be a multiple of 8, got {crop_size}")
        c1, c2 = channels
        # 4x4 patch embedding, then a stride-2 and a stride-1 3x3 convolution: crop/8 x crop/8 maps.
        self.cnn = nn.Sequential(
            nn.Conv2d(2, c1, 4, stride=4), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(inplace=True),
            nn.Flatten(), nn.Linear(c2 * (crop_size // 8) ** 2, frame_dim), nn.ReLU(inplace=True),
        )
        self.lstm = nn.LSTM(frame_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden_dim, out_dim))
        self.crop_size = crop_size
        self.out_dim = out_dim

    @staticmethod
    def normalise(video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """uint8/float frames (B, T, h, w) -> zero-mean, unit-std per clip (statistics over valid frames)."""
        x = video.float()
        if video.dtype == torch.uint8:
            x = x / 255.0
        weight = torch.ones(x.shape[:2], device=x.device) if mask is None else mask.float()  # (B, T)
        w = weight[:, :, None, None]
        count = w.sum(1, keepdim=True).clamp_min(1.0)  # (B, 1, 1, 1)
        mean_frame = (x * w).sum(1, keepdim=True) / count  # (B, 1, h, w)
        centred = (x - mean_frame) * w
        std = centred.pow(2).sum((1, 2, 3), keepdim=True).div(count * x.shape[-1] * x.shape[-2]).sqrt()
        return centred / (std + 1e-4)

    def forward_tokens(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-frame tokens.

        Args:
            video: (B, T, h, w) uint8 or float mouth crops.
            mask: optional (B, T) bool of valid frames (right padding).

        Returns:
            (B, T, D).
        """
        batch, steps, height, width = video.shape
        if (height, width) != (self.crop_size, self.crop_size):
            raise ValueError(f"video crops must be {self.crop_size}x{self.crop_size}, got {height}x{width}")
        x = self.normalise(video, mask)  # (B, T, h, w)
        motion = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], 1)  # (B, T, h, w)
        frames = torch.stack([x, motion], 2).flatten(0, 1)  # (B*T, 2, h, w)
        feats = self.cnn(frames).view(batch, steps, -1)  # (B, T, frame_dim)
        hidden, _ = self.lstm(feats)  # (B, T, 2H)
        return self.proj(hidden)  # (B, T, D)

    def forward(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of the valid per-frame tokens: (B, T, h, w) -> (B, D)."""
        tokens = self.forward_tokens(video, mask)  # (B, T, D)
        if mask is None:
            return tokens.mean(1)
        w = mask.float()[:, :, None]
        return (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)
