"""Cross-correlation sync baseline: mouth motion energy against the audio energy envelope.

The clip-wide offset is the lag k in [-K, K] that maximises the normalised correlation between the mouth-region
motion energy m(t) (mean absolute frame difference around t) and the audio log-energy at frame t + k (the classic
"energy correlation" detector that learned models such as SyncNet are compared with).
"""

from __future__ import annotations

import torch


def mouth_motion_energy(mouth: torch.Tensor) -> torch.Tensor:
    """Centred mean absolute frame difference of the mouth crops: (T, h, w) -> (T,).

    m(t) averages |crop_t - crop_{t-1}| and |crop_{t+1} - crop_t| so that it is not shifted by half a frame.
    """
    frames = mouth.float()
    if frames.shape[0] < 2:
        return torch.zeros(frames.shape[0])
    diff = (frames[1:] - frames[:-1]).abs().flatten(1).mean(1)  # (T-1,) change between t-1 and t
    padded = torch.cat([diff[:1], diff, diff[-1:]])  # (T+1,)
    return 0.5 * (padded[:-1] + padded[1:])


def audio_energy_envelope(audio: torch.Tensor, subframes: int) -> torch.Tensor:
    """Log-energy per video frame from log-mel features: (T * S, F) -> (T,)."""
    power = torch.logsumexp(audio.float(), dim=-1)  # (T*S,)
    return power.view(-1, subframes).mean(-1)


def correlation_by_lag(motion: torch.Tensor, energy: torch.Tensor, max_offset: int,
                       min_overlap: int = 8) -> torch.Tensor:
    """Normalised correlation of motion(t) with energy(t + k) for k = -K..K.

    Args:
        motion: (T,) video signal.
        energy: (T,) audio signal on the same frame grid.
        max_offset: K.
        min_overlap: lags with fewer overlapping frames score -inf.

    Returns:
        (2K + 1,) correlations, index k + K.
    """
    steps = motion.shape[0]
    scores = torch.full((2 * max_offset + 1,), float("-inf"))
    for lag in range(-max_offset, max_offset + 1):
        lo, hi = max(0, -lag), min(steps, steps - lag)
        if hi - lo < min_overlap:
            continue
        a = motion[lo:hi] - motion[lo:hi].mean()
        b = energy[lo + lag:hi + lag] - energy[lo + lag:hi + lag].mean()
        scores[lag + max_offset] = (a * b).sum() / (a.norm() * b.norm() + 1e-8)
    return scores


def estimate_offset_xcorr(mouth: torch.Tensor, audio: torch.Tensor, subframes: int, max_offset: int) -> int:
    """Clip-wide offset in frames (audio late > 0) by cross-correlation; see the module docstring."""
    scores = correlation_by_lag(mouth_motion_energy(mouth), audio_energy_envelope(audio, subframes), max_offset)
    return int(scores.argmax()) - max_offset
