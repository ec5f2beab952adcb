"""Decoding a small clip written with PyAV: frame count, rate, mouth crop, audio resampling and timing."""

import pytest
import torch

from fusion.data.video_io import (
    crop_mouth,
    load_sync_clip,
    log_mel_frames,
    read_video,
    resample_indices,
    to_mono,
)
from tests.helpers.clips import BOX, BURST, FPS, FRAMES, HEIGHT, RATE, WIDTH, write_clip


@pytest.mark.parametrize("name,fmt,vcodec,acodec", [("clip.mpg", "mpeg", "mpeg1video", "mp2"),
                                                     ("clip.mp4", "mp4", "mpeg4", "aac")])
def test_generated_clip_round_trip(tmp_path, name, fmt, vcodec, acodec):
    path = tmp_path / name
    write_clip(path, fmt, vcodec, acodec)
    decoded = read_video(path)
    assert decoded.frames.shape == (FRAMES, HEIGHT, WIDTH) and decoded.frames.dtype == torch.uint8
    assert decoded.fps == pytest.approx(FPS)
    assert decoded.sample_rate == RATE and decoded.audio.shape[0] == 2
    assert decoded.audio.shape[1] == pytest.approx(RATE * FRAMES / FPS, rel=0.1)

    mono = to_mono(decoded.audio, RATE, 16000)
    assert mono.shape[0] == pytest.approx(decoded.audio.shape[1] * 16000 / RATE, abs=2)

    clip = load_sync_clip(path, sample_rate=16000, n_mels=20, subframes=4, box=BOX, crop_size=(16, 16))
    mouth, audio = clip["mouth"], clip["audio"]
    assert mouth.shape == (FRAMES, 16, 16) and audio.shape == (FRAMES * 4, 20)
    bright = mouth.float().mean((1, 2)) > 150  # (T,)
    assert bright.nonzero().squeeze(1).tolist() == list(BURST)
    energy = torch.logsumexp(audio, -1).view(FRAMES, 4).mean(1)  # (T,)
    loud = energy > (energy.max() + energy.min()) / 2
    # The tone starts/stops within one frame of the picture (codec priming may blur a frame edge).
    on = loud.nonzero().squeeze(1)
    assert abs(on.min().item() - BURST.start) <= 1 and abs(on.max().item() - (BURST.stop - 1)) <= 1
    assert loud[BURST.start + 1: BURST.stop - 1].all()


def test_crop_mouth_picks_the_box():
    frames = torch.zeros(2, 100, 200, dtype=torch.uint8)
    frames[:, 50:75, 100:150] = 255
    crop = crop_mouth(frames, (0.5, 0.5, 0.25, 0.25), (8, 8))
    assert crop.shape == (2, 8, 8) and (crop == 255).all()
    with pytest.raises(ValueError, match="mouth box"):
        crop_mouth(frames, (0.9, 0.5, 0.5, 0.25))


def test_log_mel_frames_length_and_rate_check():
    wave = torch.randn(16000)
    feats = log_mel_frames(wave, 16000, 25.0, 30, n_mels=10, subframes=4)
    assert feats.shape == (120, 10) and torch.isfinite(feats).all()
    with pytest.raises(ValueError, match="not a multiple"):
        log_mel_frames(wave, 16000, 30.0, 30, subframes=7)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match="broken.avi"):
        read_video(broken)


def test_frame_rate_conversion_picks_the_nearest_frames(tmp_path):
    assert resample_indices(6, 30.0, 25.0).tolist() == [0, 1, 2, 4, 5]  # 0, 1.2, 2.4, 3.6, 4.8 -> nearest
    assert resample_indices(5, 25.0, 50.0).tolist() == [0, 0, 1, 2, 2, 2, 3, 4, 4, 4]  # halves round to even
    path = tmp_path / "clip.mpg"
    write_clip(path)
    native = load_sync_clip(path, n_mels=8, box=BOX, crop_size=(8, 8))
    doubled = load_sync_clip(path, n_mels=8, box=BOX, crop_size=(8, 8), fps=50.0)
    assert doubled["fps"] == 50.0 and doubled["source_fps"] == pytest.approx(25.0)
    assert doubled["mouth"].shape == (60, 8, 8) and doubled["audio"].shape == (60 * 4, 8)
    index = resample_indices(30, 25.0, 50.0)
    assert torch.equal(doubled["mouth"], native["mouth"][index])
