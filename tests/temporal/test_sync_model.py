"""SyncModel on generated streams: shapes and gradients, and learning a known offset and a known drift."""

import pytest
import torch

from fusion.temporal.offsets import (
    inject_offset,
    offset_profile,
    offsets_to_states,
    sample_offsets,
    valid_window_starts,
)
from fusion.temporal.sync import SyncModel
from tests.helpers.clips import talking_clip

K, S, MELS, SIZE, WINDOW, FRAMES = 5, 4, 8, 8, 24, 40


def small_model() -> SyncModel:
    torch.manual_seed(0)
    return SyncModel(max_offset=K, subframes=S, n_mels=MELS, crop_size=SIZE, hidden_dim=16, embed_dim=16,
                     dropout=0.0)


def window_batch(clips: list[dict], paths: list[torch.Tensor], starts: list[int] | None = None):
    video, audio, truth = [], [], []
    for i, (clip, offsets) in enumerate(zip(clips, paths, strict=True)):
        start = starts[i] if starts else (FRAMES - WINDOW) // 2
        w = inject_offset(clip["mouth"], clip["audio"], offsets, start, S)
        video.append(w.mouth)
        audio.append(w.audio.view(WINDOW, -1))
        truth.append(w.offsets)
    return torch.stack(video), torch.stack(audio), torch.stack(truth)  # (B, W, h, w), (B, W, S*F), (B, W)


def test_shapes_gradients_and_padding():
    model = small_model()
    clips = [talking_clip(s, FRAMES, S, MELS, SIZE) for s in range(3)]
    video, audio, truth = window_batch(clips, [offset_profile(WINDOW, o, o) for o in (-2, 0, 4)])
    mask = torch.ones(3, WINDOW, dtype=torch.bool)
    mask[1, 18:] = False
    out = model.loss(video, audio, offsets_to_states(truth, K), mask)
    assert out["emissions"].shape == (3, WINDOW, 2 * K + 1)
    # Candidates whose audio frame lies past a sequence's end carry the learned "unknown" score.
    assert torch.all(out["emissions"][1, 17, K + 1:] == model.unknown_score)
    assert torch.all(out["emissions"][0, 0, :K] == model.unknown_score)
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.crf.parameters())
    paths = model.decode(video, audio, mask)
    assert paths.shape == (3, WINDOW) and paths[1, 18:].isnan().all() and not paths[:, :18].isnan().any()
    assert paths[~paths.isnan()].abs().max() <= K


@pytest.fixture
def single_thread():
    """One intra-op thread: faster for these tiny ops on a shared machine, and the same float order everywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_learns_known_constant_offset_and_drift(single_thread):
    torch.manual_seed(0)
    train_clips = [talking_clip(100 + s, FRAMES, S, MELS, SIZE) for s in range(32)]
    model = small_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(120):
        picks = torch.randint(0, len(train_clips), (16,), generator=generator).tolist()
        paths = [sample_offsets(generator, WINDOW, K, drift=i % 2 == 1, min_drift=2.0, max_drift=5.0)
                 for i in range(16)]
        starts = []
        for path in paths:
            lo, hi = valid_window_starts(FRAMES, WINDOW, path, S)
            starts.append(int(torch.randint(lo, hi + 1, (1,), generator=generator)))
        video, audio, truth = window_batch([train_clips[i] for i in picks], paths, starts)
        loss = model.loss(video, audio, offsets_to_states(truth, K))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    test_clips = [talking_clip(900 + s, FRAMES, S, MELS, SIZE) for s in range(8)]
    constant = [offset_profile(WINDOW, 3, 3)] * 4
    drift = [offset_profile(WINDOW, -4.0, 1.0)] * 4  # known drift: 5 frames over the window
    video, audio, truth = window_batch(test_clips, constant + drift)
    paths = model.decode(video, audio)  # (8, W)
    clip_estimates = paths[:4].median(dim=1).values
    assert (clip_estimates == 3).all(), clip_estimates
    # Drift: judged on the frames whose sound is heard inside the window (elsewhere only the CRF prior helps).
    heard = (torch.arange(WINDOW) + truth[4:]).round()
    inside = (heard >= 0) & (heard < WINDOW)
    drift_error = (paths[4:] - truth[4:]).abs()
    assert drift_error[inside].mean() < 0.6
    assert drift_error[inside].max() <= 1.5
    # The decoded drift path moves in steps of at most one frame.
    assert (paths[4:, 1:] - paths[4:, :-1]).abs().max() <= 1


def test_posterior_offsets_follow_the_marginals_between_whole_frames():
    model = SyncModel(max_offset=2, subframes=1, n_mels=2, crop_size=8, hidden_dim=4, embed_dim=4).eval()
    emissions = torch.full((1, 6, 5), -30.0)
    emissions[0, :, 3] = 10.0  # offset +1 everywhere
    assert torch.allclose(model.posterior_offsets(emissions), torch.ones(1, 6), atol=1e-4)
    emissions[0, :, 2] = 10.0  # offsets 0 and +1 equally likely: halfway
    halfway = model.posterior_offsets(emissions, torch.tensor([[True] * 5 + [False]]))
    assert torch.allclose(halfway[0, :5], torch.full((5,), 0.5), atol=0.1) and halfway[0, 5].isnan()
