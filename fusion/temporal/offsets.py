"""Injecting audio-video offsets into an in-sync clip (the self-supervised labels of the sync model).

Convention: an offset o > 0 means the audio is late: the sound of video frame t is heard at frame t + o(t).
Offsets may vary per video frame (drift); the observed audio at time u is the in-sync audio at the time
t with t + o(t) = u (o linearly interpolated between frames), picked at the sub-frame feature rate.

Both streams are cut to the same window of W frames whose sources lie inside the clip, so neither stream
contains padding that would reveal the offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class InjectedOffset:
    """A shifted window of one clip.

    Attributes:
        mouth: (W, h, w) video frames of the window.
        audio: (W * S, F) observed (shifted) audio features of the window.
        offsets: (W,) float true offset of each video frame, in frames.
    """

    mouth: torch.Tensor
    audio: torch.Tensor
    offsets: torch.Tensor


def offset_profile(window: int, start_offset: float, end_offset: float) -> torch.Tensor:
    """Linear offset path from ``start_offset`` to ``end_offset`` over ``window`` frames (constant if equal)."""
    if window == 1:
        return torch.tensor([float(start_offset)])
    return torch.linspace(float(start_offset), float(end_offset), window)


def source_steps(offsets: torch.Tensor, subframes: int) -> torch.Tensor:
    """In-sync audio feature step heard at each observed step of a window, relative to the window start.

    Args:
        offsets: (W,) offset of each video frame of the window, in frames; consecutive frames may not differ
            by -1 or less (time would run backwards).
        subframes: feature steps per frame S.

    Returns:
        (W * S,) LongTensor; may be negative or reach past the window (the clip must cover it).
    """
    window = offsets.shape[0]
    offsets = offsets.double()
    if window > 1 and bool((offsets[1:] - offsets[:-1] <= -1.0).any()):
        raise ValueError("offsets may not decrease by a frame or more between consecutive frames")
    margin = int(offsets.abs().max().ceil()) + 2
    grid = torch.arange(-margin * subframes, (window + margin) * subframes, dtype=torch.float64) / subframes
    # o(tau): linear between frames, constant beyond the window; observed time p(tau) = tau + o(tau).
    position = grid.clamp(0, window - 1)
    left = position.floor().long().clamp(max=window - 1)
    right = (left + 1).clamp(max=window - 1)
    frac = position - left
    observed = grid + offsets[left] * (1 - frac) + offsets[right] * frac  # increasing
    wanted = torch.arange(window * subframes, dtype=torch.float64) / subframes
    idx = torch.searchsorted(observed, wanted).clamp(1, observed.numel() - 1)
    x0, x1 = observed[idx - 1], observed[idx]
    weight = (wanted - x0) / (x1 - x0)
    source = grid[idx - 1] + weight * (grid[idx] - grid[idx - 1])  # (W*S,) in frames
    return torch.round(source * subframes).long()


def valid_window_starts(num_frames: int, window: int, offsets: torch.Tensor, subframes: int = 4) -> tuple[int, int]:
    """Range [lo, hi] of window starts whose shifted audio sources all lie inside the clip (lo > hi: none)."""
    rel = source_steps(offsets, subframes)  # (W*S,)
    lo = max(0, -int(torch.div(rel.min(), subframes, rounding_mode="floor")))  # ceil(-min / S)
    hi = min(num_frames - window, int(torch.div(num_frames * subframes - 1 - rel.max(), subframes, rounding_mode="floor")))
    return lo, hi


def inject_offset(mouth: torch.Tensor, audio: torch.Tensor, offsets: torch.Tensor, start: int,
                  subframes: int) -> InjectedOffset:
    """Cuts the window [start, start + W) and shifts its audio by the per-frame ``offsets``.

    Args:
        mouth: (T, h, w) in-sync video frames.
        audio: (T * S, F) in-sync audio features, S = ``subframes``.
        offsets: (W,) offset of each window frame, in frames.
        start: first video frame of the window.
        subframes: audio feature steps per video frame.

    Returns:
        The window with shifted audio.

    Raises:
        ValueError: if the window or a shifted audio source falls outside the clip.
    """
    num_frames, window = mouth.shape[0], offsets.shape[0]
    if audio.shape[0] != num_frames * subframes:
        raise ValueError(f"audio has {audio.shape[0]} steps, expected {num_frames} frames x {subframes} subframes")
    if start < 0 or start + window > num_frames:
        raise ValueError(f"window [{start}, {start + window}) is outside the clip of {num_frames} frames")
    source = start * subframes + source_steps(offsets, subframes)  # (W*S,)
    if bool((source < 0).any() or (source >= num_frames * subframes).any()):
        raise ValueError(f"offsets {offsets.min().item():.1f}..{offsets.max().item():.1f} move the audio of the "
                         f"window starting at frame {start} outside the clip of {num_frames} frames")
    return InjectedOffset(mouth[start:start + window], audio[source], offsets.clone())


def sample_offsets(generator: torch.Generator, window: int, max_offset: int, drift: bool,
                   min_drift: float = 3.0, max_drift: float = 10.0) -> torch.Tensor:
    """Random offset path: a constant integer offset in [-K, K], or a linear drift.

    A drift starts at a uniform offset and changes by a uniform amount in [min_drift, max_drift] frames (either
    sign) over the window, staying inside [-K, K].

    Returns:
        (W,) float offsets in frames.
    """
    if not drift:
        value = int(torch.randint(-max_offset, max_offset + 1, (1,), generator=generator))
        return offset_profile(window, value, value)
    change = min_drift + (max_drift - min_drift) * float(torch.rand(1, generator=generator))
    change = min(change, 2.0 * max_offset)
    sign = 1.0 if float(torch.rand(1, generator=generator)) < 0.5 else -1.0
    first = -max_offset + (2.0 * max_offset - change) * float(torch.rand(1, generator=generator))
    start, end = (first, first + change) if sign > 0 else (first + change, first)
    return offset_profile(window, start, end)


def offsets_to_states(offsets: torch.Tensor, max_offset: int) -> torch.Tensor:
    """Rounds offsets (frames) to CRF states 0..2K (state k <-> offset k - K)."""
    return (torch.round(offsets).long() + max_offset).clamp(0, 2 * max_offset)


def states_to_offsets(states: torch.Tensor, max_offset: int) -> torch.Tensor:
    """Inverse of :func:`offsets_to_states` (frames, as float)."""
    return (states - max_offset).float()
