"""Training augmentation of sync windows: the mouth crops (mirror, geometry, photometry, blur, compression) and
the log-mel audio (noise, reverberation, band limits), so the model sees faces, framings and rooms it was not
recorded with.

Every transform keeps the timing: geometry and photometry are drawn once per window (plus a small per-frame
jitter of the crop, as a face tracker has), audio transforms act in the mel power domain. Audio gain is not a
transform here: the audio stream is normalised per clip (mean and variance of each log-mel feature), which
removes any gain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fusion.errors import ConfigError


@dataclass
class SyncAugment:
    """Which augmentations a training window gets (probabilities per window; 0 = off).

    The audio transforms are off by default: on the measured sets (clean GRID audio, re-framed and re-encoded
    video) they cost accuracy (docs/experiments/sync_augmentation.md); they are meant for noisy recordings.

    Attributes:
        flip: mirror the mouth crops left-right with probability 0.5.
        geometry: strength of the random crop affine (1: scale x0.85-1.15, shift +-8 % of the crop, rotation
            +-10 degrees, per-frame jitter +-2 %); 0 = off.
        photometric: probability of a random brightness (+-0.15), contrast (x0.6-1.4) and gamma (0.7-1.4).
        blur: probability of a Gaussian blur (sigma 0.3-1.2 crop pixels).
        compression: probability of JPEG compression of every frame (quality 30-80).
        noise: probability of additive noise at an SNR of 0-30 dB (white or pink spectrum).
        reverb: probability of reverberation (exponential energy decay, RT60 0.2-0.8 s).
        band: probability of a band limit (low cut 100-400 Hz and/or high cut 2.5-5 kHz).
    """

    flip: bool = True
    geometry: float = 1.0
    photometric: float = 0.8
    blur: float = 0.3
    compression: float = 0.3
    noise: float = 0.0
    reverb: float = 0.0
    band: float = 0.0

    def __post_init__(self) -> None:
        for name in ("photometric", "blur", "compression", "noise", "reverb", "band"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"data.augment.{name} is a probability in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.geometry <= 2.0:
            raise ConfigError(f"data.augment.geometry is a strength in [0, 2], got {self.geometry}")

    @classmethod
    def of(cls, value: SyncAugment | dict | bool | None) -> SyncAugment:
        """From a config value: a mapping of fields, True (the defaults) or False/None (everything off)."""
        if isinstance(value, SyncAugment):
            return value
        if value is None or value is False:
            return cls(flip=False, geometry=0.0, photometric=0.0, blur=0.0, compression=0.0, noise=0.0,
                       reverb=0.0, band=0.0)
        if value is True:
            return cls()
        try:
            return cls(**dict(value))
        except TypeError as err:
            raise ConfigError(f"data.augment: {err} (fields: {', '.join(cls.__dataclass_fields__)})") from None

    def video(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augments mouth crops (W, h, w) uint8 -> (W, h, w) uint8."""
        def rand(lo: float, hi: float) -> float:
            return lo + (hi - lo) * float(torch.rand((), generator=generator))

        x = frames.float() / 255.0  # (W, h, w)
        if self.flip and rand(0, 1) < 0.5:
            x = x.flip(-1)
        if self.geometry > 0:
            g, steps = self.geometry, x.shape[0]
            scale = math.exp(rand(-1, 1) * math.log(1.15) * g)
            angle = math.radians(rand(-10, 10) * g)
            shift = torch.tensor([rand(-0.16, 0.16), rand(-0.16, 0.16)]) * g  # fraction of the half-crop
            jitter = (torch.rand(steps, 2, generator=generator) - 0.5) * 0.08 * g  # (W, 2)
            cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
            theta = torch.zeros(steps, 2, 3)
            theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
            theta[:, :, 2] = shift + jitter
            grid = F.affine_grid(theta, [steps, 1, *x.shape[1:]], align_corners=False)
            x = F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
        if rand(0, 1) < self.photometric:
            gamma = math.exp(rand(math.log(0.7), math.log(1.4)))
            x = x.clamp(0, 1).pow(gamma)
            mean = x.mean()
            x = (x - mean) * rand(0.6, 1.4) + mean + rand(-0.15, 0.15)
        if rand(0, 1) < self.blur:
            sigma = rand(0.3, 1.2)
            taps = torch.arange(-2, 3, dtype=torch.float32)
            kernel = torch.exp(-taps**2 / (2 * sigma**2))
            kernel = kernel / kernel.sum()
            x = F.conv2d(F.pad(x[:, None], (2, 2, 0, 0), mode="replicate"), kernel.view(1, 1, 1, 5))
            x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), kernel.view(1, 1, 5, 1))[:, 0]
        out = (x * 255.0).round().clamp(0, 255).to(torch.uint8)
        if rand(0, 1) < self.compression:
            import cv2

            quality = int(rand(30, 80))
            out = torch.from_numpy(np.stack([
                cv2.imdecode(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_GRAYSCALE)
                for f in out.numpy()]))
        return out

    def audio(self, log_mel: torch.Tensor, sample_rate: int, step_s: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Augments log-mel features (N, F) (log of mel power, N steps of ``step_s`` seconds) -> (N, F)."""
        def rand(lo: float, hi: float) -> float:
            return lo + (hi - lo) * float(torch.rand((), generator=generator))

        reverb, band, noise = (rand(0, 1) < p for p in (self.reverb, self.band, self.noise))
        if not (reverb or band or noise):
            return log_mel
        power = log_mel.float().exp()  # (N, F)
        bands = power.shape[1]
        if reverb:
            rt60 = rand(0.2, 0.8)
            taps = max(1, int(rt60 / step_s))
            decay = torch.exp(-6.9 * torch.arange(taps, dtype=torch.float32) * step_s / rt60)  # -60 dB at RT60
            decay[1:] *= rand(0.1, 0.5)  # direct path dominates
            padded = F.pad(power.t()[:, None], (taps - 1, 0))  # (F, 1, N + taps - 1), causal
            power = F.conv1d(padded, decay.flip(0).view(1, 1, -1))[:, 0].t()
        if band:
            centres = mel_centres(bands, sample_rate)  # (F,)
            gain = torch.ones(bands)
            if rand(0, 1) < 0.7:
                gain = gain * torch.sigmoid((centres - rand(100, 400)) / 50.0)
            if rand(0, 1) < 0.7:
                gain = gain * torch.sigmoid((rand(2500, 5000) - centres) / 300.0)
            power = power * gain.clamp_min(1e-4)
        if noise:
            snr_db = rand(0, 30)
            spectrum = torch.ones(bands) if rand(0, 1) < 0.5 else 1.0 / (1.0 + torch.arange(bands, dtype=torch.float32))
            spectrum = spectrum * (0.5 + torch.rand(bands, generator=generator))
            texture = 0.5 + torch.rand(power.shape, generator=generator)  # (N, F) fluctuation around 1
            level = power.mean() / spectrum.mean() / 10 ** (snr_db / 10)
            power = power + level * spectrum * texture
        return torch.log(power + 1e-6).to(log_mel.dtype)


def mel_centres(bands: int, sample_rate: int) -> torch.Tensor:
    """Centre frequencies (Hz) of torchaudio's default HTK mel bands from 0 to sample_rate / 2: (F,)."""
    def mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    points = torch.linspace(0.0, mel(sample_rate / 2), bands + 2)[1:-1]
    return 700.0 * (10 ** (points / 2595.0) - 1.0)
