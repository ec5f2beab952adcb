"""Offset injection (constant and drift), state mapping, and the cross-correlation baseline."""

import pytest
import torch

from fusion.temporal.baseline import correlation_by_lag, estimate_offset_xcorr
from fusion.temporal.offsets import (
    inject_offset,
    offset_profile,
    offsets_to_states,
    sample_offsets,
    source_steps,
    states_to_offsets,
    valid_window_starts,
)
from tests.helpers.clips import talking_clip


def test_constant_offset_shifts_audio_by_whole_frames():
    audio = torch.arange(40 * 4, dtype=torch.float32)[:, None]  # step index as the feature
    mouth = torch.zeros(40, 2, 2, dtype=torch.uint8)
    window = inject_offset(mouth, audio, offset_profile(20, 3, 3), start=10, subframes=4)
    # Observed step u of the window hears in-sync step (10 * 4 + u) - 3 * 4.
    expected = torch.arange(10 * 4, 30 * 4) - 12
    assert torch.equal(window.audio[:, 0].long(), expected)
    assert window.mouth.shape == (20, 2, 2)
    assert torch.equal(window.offsets, torch.full((20,), 3.0))


def test_drift_maps_each_video_frame_to_its_delayed_sound():
    offsets = offset_profile(30, -4.0, 6.0)  # slope 10/29 frames per frame
    rel = source_steps(offsets, subframes=4).double() / 4  # (W*S,) in-sync time heard at each observed step
    observed = torch.arange(30 * 4, dtype=torch.float64) / 4
    # The sound of video frame t is heard at t + o(t): invert on the frames that are heard inside the window.
    for t in range(5, 20):
        heard_at = t + offsets[t].item()
        step = round(heard_at * 4)
        assert abs(rel[step].item() - (observed[step].item() - offsets[t].item())) <= 0.25 + 0.5
        assert abs(rel[step].item() - t) <= 0.5


def test_valid_window_starts_are_tight():
    mouth, audio = torch.zeros(74, 1, 1), torch.zeros(74 * 4, 1)
    for first, last in [(15, 15), (-15, -15), (0, 0), (5, 15), (-15, -5), (15, 5)]:
        offsets = offset_profile(44, first, last)
        lo, hi = valid_window_starts(74, 44, offsets)
        assert lo <= 15 <= hi  # the centred evaluation window always fits
        inject_offset(mouth, audio, offsets, lo, 4)
        inject_offset(mouth, audio, offsets, hi, 4)
        for bad in (lo - 1, hi + 1):
            with pytest.raises(ValueError, match="outside the clip"):
                inject_offset(mouth, audio, offsets, bad, 4)


def test_sampled_offsets_stay_in_range_and_are_reproducible():
    paths = [sample_offsets(torch.Generator().manual_seed(s), 44, 15, drift=s % 2 == 1) for s in range(200)]
    again = [sample_offsets(torch.Generator().manual_seed(s), 44, 15, drift=s % 2 == 1) for s in range(200)]
    assert all(torch.equal(a, b) for a, b in zip(paths, again, strict=True))
    for s, path in enumerate(paths):
        assert path.abs().max() <= 15 + 1e-6
        change = (path[-1] - path[0]).abs().item()
        if s % 2:
            assert 3.0 - 1e-5 <= change <= 10.0 + 1e-5
        else:
            assert change == 0 and path[0] == path[0].round()
    states = offsets_to_states(torch.tensor([-15.0, -0.4, 0.6, 15.0]), 15)
    assert states.tolist() == [0, 15, 16, 30]
    assert states_to_offsets(states, 15).tolist() == [-15.0, 0.0, 1.0, 15.0]


@pytest.mark.parametrize("offset", [-7, -2, 0, 3, 8])
def test_cross_correlation_baseline_recovers_a_known_constant_offset(offset):
    clip = talking_clip(seed=11, frames=70)
    window = inject_offset(clip["mouth"], clip["audio"], offset_profile(40, offset, offset), start=15, subframes=4)
    assert estimate_offset_xcorr(window.mouth, window.audio, subframes=4, max_offset=10) == offset


def test_correlation_by_lag_of_identical_signals_peaks_at_zero():
    signal = torch.randn(30, generator=torch.Generator().manual_seed(0))
    scores = correlation_by_lag(signal, signal, 5)
    assert scores.argmax().item() == 5 and scores[5].item() == pytest.approx(1.0, abs=1e-5)
