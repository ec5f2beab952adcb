"""Audio encoder: torchaudio log-mel front end + a small 2-D CNN over (mel, time)."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn


class LogMel(nn.Module):
    """Waveform (B, L) -> per-utterance normalised log-mel spectrogram (B, 1, n_mels, frames)."""

    def __init__(self, sample_rate: int = 8000, n_mels: int = 40, win_ms: float = 25.0, hop_ms: float = 10.0):
        super().__init__()
        win = int(sample_rate * win_ms / 1000)
        n_fft = 1 << (win - 1).bit_length()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win, hop_length=int(sample_rate * hop_ms / 1000),
            n_mels=n_mels, f_max=sample_rate / 2, power=2.0)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=wave.device.type, enabled=False):
            spec = torch.log(self.mel(wave.float()) + 1e-6)  # (B, M, T)
        mean = spec.mean(dim=(1, 2), keepdim=True)
        std = spec.std(dim=(1, 2), keepdim=True)
        return ((spec - mean) / (std + 1e-5)).unsqueeze(1)  # (B, 1, M, T)


class AudioEncoder(nn.Module):
    """Waveforms (B, L) -> pooled features (B, out_dim); `forward_tokens` gives per-frame (B, T', out_dim).

    Args:
        sample_rate: rate of the incoming waveform.
        n_mels: mel bands of the front end.
        out_dim: feature size.
        width: channels of the first conv block (doubled per block).
    """

    def __init__(self, sample_rate: int = 8000, n_mels: int = 40, out_dim: int = 128, width: int = 16):
        super().__init__()
        self.frontend = LogMel(sample_rate, n_mels)
        layers, channels = [], 1
        for out in (width, width * 2, width * 4):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            channels = out
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(channels, out_dim)
        self.out_dim = out_dim

    def forward_tokens(self, wave: torch.Tensor) -> torch.Tensor:
        fmap = self.body(self.frontend(wave))  # (B, C, M', T')
        return self.proj(fmap.mean(dim=2).transpose(1, 2))  # (B, T', D)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        fmap = self.body(self.frontend(wave))  # (B, C, M', T')
        pooled = fmap.mean(dim=2)  # (B, C, T')
        return self.proj(torch.maximum(pooled.mean(dim=2), pooled.amax(dim=2)))  # (B, D)
