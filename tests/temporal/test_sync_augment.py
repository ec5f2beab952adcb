"""Sync training augmentation: each transform does what it says, keeps shapes and timing, and can be switched off."""

import pytest
import torch

from fusion.data.sync_augment import SyncAugment, mel_centres
from fusion.errors import ConfigError

OFF = dict(flip=False, geometry=0.0, photometric=0.0, blur=0.0, compression=0.0, noise=0.0, reverb=0.0, band=0.0)


def crops() -> torch.Tensor:
    frames = torch.zeros(6, 16, 16, dtype=torch.uint8)
    frames[:, 6:10, 2:8] = 200  # a bright bar on the left half
    frames[3, 6:10, 2:14] = 250  # frame 3 differs: timing must be kept
    return frames


def test_off_is_identity_and_flip_mirrors():
    frames = crops()
    assert torch.equal(SyncAugment.of(False).video(frames), frames)
    flips = {SyncAugment(**(OFF | {"flip": True})).video(frames, torch.Generator().manual_seed(s)).sum(0).argmax().item()
             for s in range(8)}
    assert len(flips) == 2  # sometimes mirrored, sometimes not


def test_geometry_photometry_blur_compression_change_frames_but_keep_timing():
    frames = crops()
    for field in ("geometry", "photometric", "blur", "compression"):
        out = SyncAugment(**(OFF | {field: 1.0})).video(frames, torch.Generator().manual_seed(1))
        assert out.shape == frames.shape and out.dtype == torch.uint8
        assert not torch.equal(out, frames), field
        change = (out.float() - out[0].float()).abs().flatten(1).mean(1)  # (T,)
        assert int(change.argmax()) == 3, field  # the odd frame is still the odd one
    blurred = SyncAugment(**(OFF | {"blur": 1.0})).video(frames, torch.Generator().manual_seed(2)).float()
    assert blurred[0, 8, 1] > 0 and blurred[0, 8, 4] < 200  # the edge is softened


def features(steps: int = 80, bands: int = 20) -> torch.Tensor:
    power = torch.full((steps, bands), 1e-4)
    power[20:30] = 1.0  # one loud burst
    return power.log()


def test_audio_noise_reverb_and_band_limits():
    log_mel = features()
    step_s = 0.01
    noisy = SyncAugment(**(OFF | {"noise": 1.0})).audio(log_mel, 16000, step_s, torch.Generator().manual_seed(0))
    assert noisy[:10].mean() > log_mel[:10].mean() + 3.0  # silence gets a noise floor
    reverb = SyncAugment(**(OFF | {"reverb": 1.0})).audio(log_mel, 16000, step_s, torch.Generator().manual_seed(0))
    assert reverb[31].mean() > log_mel[31].mean() + 3.0  # the burst rings on
    assert reverb[19].mean() < log_mel[19].mean() + 1.0  # causal: no echo before it
    gen = torch.Generator().manual_seed(3)
    band = SyncAugment(**(OFF | {"band": 1.0})).audio(log_mel, 16000, step_s, gen)
    assert band.shape == log_mel.shape and not torch.allclose(band[25], log_mel[25])
    assert torch.equal(SyncAugment.of(None).audio(log_mel, 16000, step_s), log_mel)
    centres = mel_centres(40, 16000)
    assert centres[0] > 0 and centres[-1] < 8000 and bool((centres.diff() > 0).all())


def test_config_values_are_checked():
    assert SyncAugment.of(True) == SyncAugment()
    assert SyncAugment.of({"noise": 0.0}).noise == 0.0
    with pytest.raises(ConfigError, match="data.augment.blur"):
        SyncAugment(blur=1.5)
    with pytest.raises(ConfigError, match="fields"):
        SyncAugment.of({"sharpen": 1.0})
