"""Sync metrics: offset error in ms, share within +-1 frame, share inside the perceptual window.

Sign convention as in :mod:`fusion.temporal.offsets` (offset > 0: audio late). After correcting a clip by the
estimate, the remaining audio lag is ``true - estimate``; it is imperceptible when it lies in [-45, +125] ms
(audio at most 45 ms early or 125 ms late; ITU-R BT.1359).
"""

from __future__ import annotations

import torch

WINDOW_EARLY_MS = 45.0
WINDOW_LATE_MS = 125.0


def clip_offsets(paths: torch.Tensor) -> torch.Tensor:
    """Clip-wide offset estimate: median of each per-frame path over its valid (non-NaN) frames, (N, T) -> (N,)."""
    return paths.nanmedian(dim=1).values


def offset_errors(estimate: torch.Tensor, truth: torch.Tensor, fps: float, prefix: str = "") -> dict[str, float]:
    """Error summary over all non-NaN entries of equally shaped ``estimate`` and ``truth`` (in frames).

    Returns:
        {prefix+"offset_mae_ms", prefix+"within_40ms" (|error| <= 1 frame), prefix+"within_window",
        prefix+"count"}.
    """
    valid = ~(estimate.isnan() | truth.isnan())
    error = (estimate - truth)[valid].double()  # frames
    if error.numel() == 0:
        return {}
    residual_ms = -error * 1000.0 / fps  # remaining audio lag after correction
    return {
        f"{prefix}offset_mae_ms": float(error.abs().mean() * 1000.0 / fps),
        f"{prefix}within_40ms": float((error.abs() <= 1.0 + 1e-6).double().mean()),
        f"{prefix}within_window": float(((residual_ms >= -WINDOW_EARLY_MS) & (residual_ms <= WINDOW_LATE_MS)).double().mean()),
        f"{prefix}count": float(error.numel()),
    }


def sync_report(paths: torch.Tensor, truth: torch.Tensor, drift: torch.Tensor, baseline: torch.Tensor,
                fps: float) -> dict[str, float]:
    """All sync metrics of a set of evaluation windows.

    Args:
        paths: (N, T) decoded per-frame offsets (frames), NaN at padding.
        truth: (N, T) true per-frame offsets (frames).
        drift: (N,) bool, windows with a drifting offset.
        baseline: (N,) clip-wide cross-correlation estimates (frames).
        fps: frame rate.

    Returns:
        Constant-offset windows, clip-wide estimate (median of the path): ``offset_mae_ms``, ``within_40ms``,
        ``within_window``; the same per frame under ``frame/``; drift windows per frame under ``drift/``
        (and under ``drift_heard/`` only the frames whose sound falls inside the window);
        the cross-correlation baseline under ``baseline/`` (constant) and ``baseline_drift/`` (per frame).
    """
    drift = drift.bool()
    constant = ~drift
    metrics: dict[str, float] = {}
    if constant.any():
        true_clip = truth[constant].nanmean(1)  # (Nc,)
        metrics |= offset_errors(clip_offsets(paths[constant]), true_clip, fps)
        metrics |= offset_errors(paths[constant], truth[constant], fps, "frame/")
        metrics |= offset_errors(baseline[constant].float(), true_clip, fps, "baseline/")
    if drift.any():
        metrics |= offset_errors(paths[drift], truth[drift], fps, "drift/")
        # Frames whose sound is heard inside the window: elsewhere the audio stream carries no evidence.
        steps = truth.shape[1]
        lengths = (~paths.isnan()).sum(1, keepdim=True)  # (N, 1)
        heard_at = torch.arange(steps)[None, :] + truth.round()  # (N, T)
        heard = (heard_at >= 0) & (heard_at < lengths)
        metrics |= offset_errors(paths[drift].masked_fill(~heard[drift], float("nan")), truth[drift], fps,
                                 "drift_heard/")
        flat_baseline = baseline[drift].float()[:, None].expand_as(truth[drift])
        metrics |= offset_errors(flat_baseline, truth[drift], fps, "baseline_drift/")
    return metrics
