"""Audio encoder: torchaudio log-mel front end + a small 2-D CNN over (mel, time)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from fusion.encoders.preprocessing import AudioPreprocessing

DB_TO_LOG = math.log(10) / 10  # natural-log units of power per dB


class LogMel(nn.Module):
    """Waveform (B, L) -> log-mel spectrogram (B, 1, n_mels, frames), each band mean-normalised over time.

    Per-band mean removal (cepstral-mean-style) takes out channel and speaker spectral tilt. Options:
    `top_db` floors the log power at the utterance's peak minus that many dB; `voiced_db` takes the mean and
    scale over the frames within that many dB of the loudest (so silence and padding do not set them).
    """

    def __init__(self, sample_rate: int = 8000, n_mels: int = 40, win_ms: float = 25.0, hop_ms: float = 10.0,
                 top_db: float | None = None, voiced_db: float | None = None):
        super().__init__()
        self.top_db, self.voiced_db = top_db, voiced_db
        win = int(sample_rate * win_ms / 1000)
        n_fft = 1 << (win - 1).bit_length()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win, hop_length=int(sample_rate * hop_ms / 1000),
            n_mels=n_mels, f_max=sample_rate / 2, power=2.0)
        # not in the state dict: derived from the window, so runs saved before it load unchanged
        self.register_buffer("dft_basis", windowed_dft_basis(self.mel.spectrogram.window, n_fft), persistent=False)

    def power_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, L) -> mel power (B, M, T): torchaudio's MelSpectrogram with its own buffers, written out so that
        torch.compile traces it whole (torchaudio's spectrogram breaks the graph) and the power stays real.
        Exported (ONNX), the STFT is a strided convolution with the windowed DFT basis (`dft_power`)."""
        spectrogram = self.mel.spectrogram
        if torch.compiler.is_exporting():
            power = self.dft_power(wave)  # (B, F, T)
        else:
            spec = torch.stft(wave, spectrogram.n_fft, spectrogram.hop_length, spectrogram.win_length,
                              spectrogram.window, spectrogram.center, spectrogram.pad_mode, normalized=False,
                              onesided=spectrogram.onesided, return_complex=True)  # (B, F, T)
            power = torch.view_as_real(spec).square().sum(-1)  # (B, F, T)
        return (power.transpose(1, 2) @ self.mel.mel_scale.fb).transpose(1, 2)  # (B, M, T)

    def dft_power(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, L) -> STFT power (B, n_fft // 2 + 1, T) as one strided convolution (a GEMM) with the windowed DFT
        basis. ONNX Runtime's STFT op computes a plain DFT frame by frame: on a 2-core CPU it was a third of the
        whole model's time."""
        spectrogram = self.mel.spectrogram
        n_fft = spectrogram.n_fft
        frames = wave.unsqueeze(1)  # (B, 1, L)
        if spectrogram.center:
            frames = F.pad(frames, (n_fft // 2, n_fft // 2), mode=spectrogram.pad_mode)
        real, imag = F.conv1d(frames, self.dft_basis, stride=spectrogram.hop_length).chunk(2, dim=1)  # (B, F, T) each
        return real.square() + imag.square()

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=wave.device.type, enabled=False):
            spec = torch.log(self.power_mel(wave.float()) + 1e-6)  # (B, M, T)
            if self.top_db is not None:  # floor at the utterance's peak minus top_db
                spec = torch.maximum(spec, spec.amax(dim=(1, 2), keepdim=True) - self.top_db * DB_TO_LOG)
            if self.voiced_db is None:
                weight = torch.ones_like(spec[:, :1])  # (B, 1, T)
            else:  # statistics over the frames within voiced_db of the loudest, not the silence or padding
                energy = torch.logsumexp(spec, dim=1, keepdim=True)  # (B, 1, T)
                weight = (energy >= energy.amax(dim=2, keepdim=True) - self.voiced_db * DB_TO_LOG).to(spec.dtype)
            frames = weight.sum(dim=2, keepdim=True)  # (B, 1, 1)
            spec = spec - (spec * weight).sum(dim=2, keepdim=True) / frames  # per band
            var = (spec.square() * weight).sum(dim=(1, 2), keepdim=True) / (frames * spec.shape[1] - 1)  # (B, 1, 1)
        return (spec / (var.sqrt() + 1e-5)).unsqueeze(1)  # (B, 1, M, T)


def windowed_dft_basis(window: torch.Tensor, n_fft: int) -> torch.Tensor:
    """(2 (n_fft // 2 + 1), 1, n_fft) convolution weights: the window (centred in n_fft, as torch.stft pads it)
    times the cosines, then times the sines, of the one-sided DFT."""
    left = (n_fft - window.numel()) // 2
    padded = F.pad(window.double(), (left, n_fft - window.numel() - left))  # (n_fft,)
    angle = 2 * torch.pi * torch.outer(torch.arange(n_fft // 2 + 1), torch.arange(n_fft)).double() / n_fft
    basis = torch.cat([padded * torch.cos(angle), -padded * torch.sin(angle)])  # (2F, n_fft)
    return basis.float().unsqueeze(1)


class SpectrogramAugment(nn.Module):
    """Training-time augmentation of (B, 1, M, T) spectrograms, drawn per sample.

    Frequency warping (vocal-tract-length style stretch of the mel axis by a factor in 1 +- `warp`), a random
    time shift of up to `shift` of the frames, and SpecAugment masks (one band of up to `freq_mask` bins, two
    spans of up to `time_mask` frames).
    """

    def __init__(self, warp: float = 0.12, shift: float = 0.1, freq_mask: int = 6, time_mask: int = 10):
        super().__init__()
        self.warp, self.shift, self.freq_mask, self.time_mask = warp, shift, freq_mask, time_mask

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        b, _, m, t = spec.shape
        dev = spec.device
        alpha = 1 + (torch.rand(b, device=dev) * 2 - 1) * self.warp  # (B,)
        offset = (torch.rand(b, device=dev) * 2 - 1) * self.shift * 2  # (B,) in [-1, 1] grid units
        ys = torch.linspace(-1, 1, m, device=dev)
        xs = torch.linspace(-1, 1, t, device=dev)
        grid_y = ((ys[None, :] + 1) / alpha[:, None] - 1)[:, :, None].expand(b, m, t)  # (B, M, T)
        grid_x = (xs[None, :] - offset[:, None])[:, None, :].expand(b, m, t)  # (B, M, T)
        spec = F.grid_sample(spec, torch.stack([grid_x, grid_y], dim=-1), align_corners=True, padding_mode="zeros")
        bins = torch.arange(m, device=dev)[None, :]
        frames = torch.arange(t, device=dev)[None, :]
        f0 = torch.randint(0, m, (b, 1), device=dev)
        keep = ~((bins >= f0) & (bins < f0 + torch.randint(0, self.freq_mask + 1, (b, 1), device=dev)))  # (B, M)
        spec = spec * keep[:, None, :, None]
        for _ in range(2):
            t0 = torch.randint(0, t, (b, 1), device=dev)
            keep = ~((frames >= t0) & (frames < t0 + torch.randint(0, self.time_mask + 1, (b, 1), device=dev)))  # (B, T)
            spec = spec * keep[:, None, None, :]
        return spec


class AudioEncoder(nn.Module):
    """Waveforms (B, L) -> pooled features (B, out_dim); `forward_tokens` gives per-frame (B, T', out_dim).

    Args:
        sample_rate: rate of the incoming waveform.
        n_mels: mel bands of the front end.
        out_dim: feature size.
        width: channels of the first conv block (doubled per block).
        augment: apply SpectrogramAugment in training mode (helps with unseen speakers).
        augment_args: keyword arguments of SpectrogramAugment (e.g. {"warp": 0.25}); defaults when None.
        frontend_args: keyword arguments of LogMel (e.g. {"voiced_db": 30}); defaults when None.
    """

    def __init__(self, sample_rate: int = 8000, n_mels: int = 40, out_dim: int = 128, width: int = 16,
                 augment: bool = True, augment_args: dict | None = None, frontend_args: dict | None = None):
        super().__init__()
        self.frontend = LogMel(sample_rate, n_mels, **(frontend_args or {}))
        self.augment = SpectrogramAugment(**(augment_args or {})) if augment else None
        layers, channels = [], 1
        for out in (width, width * 2, width * 4):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            channels = out
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(channels, out_dim)
        self.out_dim = out_dim

    @classmethod
    def preprocessing(cls, sample_rate: int = 8000, **_options) -> AudioPreprocessing:
        """Waveforms at sample_rate, cropped / padded to a fixed length (data.audio_seconds)."""
        return AudioPreprocessing(sample_rate=int(sample_rate))

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        spec = self.frontend(wave)  # (B, 1, M, T)
        return self.augment(spec) if self.training and self.augment is not None else spec

    def forward_tokens(self, wave: torch.Tensor) -> torch.Tensor:
        fmap = self.body(self.spectrogram(wave))  # (B, C, M', T')
        return self.proj(fmap.mean(dim=2).transpose(1, 2))  # (B, T', D)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        fmap = self.body(self.spectrogram(wave))  # (B, C, M', T')
        pooled = fmap.mean(dim=2)  # (B, C, T')
        return self.proj(torch.maximum(pooled.mean(dim=2), pooled.amax(dim=2)))  # (B, D)
