"""Encoders: pooled features agree with their token features; augmentation only in training."""

from __future__ import annotations

import torch

from fusion.encoders.audio import AudioEncoder
from fusion.encoders.image import ImageEncoder
from fusion.encoders.text import TextEncoder


def test_image_pooled_features_are_the_mean_of_its_tokens():
    torch.manual_seed(0)
    encoder = ImageEncoder(out_dim=24).eval()
    images = torch.randn(3, 1, 32, 32)
    tokens = encoder.forward_tokens(images)  # (B, 16, D): 32 / 8 = 4 x 4 positions
    assert tokens.shape == (3, 16, 24)
    torch.testing.assert_close(encoder(images), tokens.mean(dim=1))


def test_flattened_image_features_read_every_position_of_the_map():
    """pool=flatten: one linear map of the whole (C, H/8, W/8) map, so moving the same evidence to another position
    changes the features (the mean over positions would not)."""
    import pytest

    from fusion.errors import ConfigError

    torch.manual_seed(0)
    encoder = ImageEncoder(out_dim=24, width=4, pool="flatten").eval()
    images = torch.randn(3, 1, 32, 32)
    fmap = encoder.trunk(images)  # (3, 16, 4, 4)
    torch.testing.assert_close(encoder(images), fmap.flatten(1) @ encoder.proj.weight.T + encoder.proj.bias)
    assert encoder.proj.in_features == 16 * 4 * 4
    moved = encoder.proj(fmap.roll(1, dims=3).flatten(1))
    assert (moved - encoder(images)).abs().max() > 1e-2
    with pytest.raises(ConfigError, match="pool=mean"):
        encoder.forward_tokens(images)
    with pytest.raises(ConfigError, match="'mean' or 'flatten'"):
        ImageEncoder(pool="max")
    assert ImageEncoder(out_dim=24, width=4, pool="flatten", image_size=48).proj.in_features == 16 * 6 * 6


def test_text_padding_does_not_change_the_pooled_features():
    torch.manual_seed(0)
    encoder = TextEncoder(out_dim=16, num_layers=1).eval()
    short = {"input_ids": torch.tensor([[1, 70, 71, 2]]), "attention_mask": torch.tensor([[1, 1, 1, 1]])}
    padded = {"input_ids": torch.tensor([[1, 70, 71, 2, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0]])}
    torch.testing.assert_close(encoder(short), encoder(padded))


def test_audio_augmentation_runs_only_in_training():
    torch.manual_seed(0)
    encoder = AudioEncoder(out_dim=8)
    wave = torch.randn(2, 8000)
    encoder.eval()
    torch.testing.assert_close(encoder(wave), encoder(wave))
    encoder.train()
    spec_a, spec_b = encoder.spectrogram(wave), encoder.spectrogram(wave)
    assert not torch.equal(spec_a, spec_b)  # random warp / shift / masks per call
    torch.testing.assert_close(encoder.eval().spectrogram(wave), encoder.frontend(wave))


def test_log_mel_power_equals_torchaudio_and_compiles_as_one_graph():
    """The written-out STFT -> power -> mel filterbank gives torchaudio's MelSpectrogram (the oracle, from the same
    buffers), and the front end traces without a graph break (torchaudio's spectrogram breaks it)."""
    from fusion.encoders.audio import LogMel

    frontend = LogMel(sample_rate=8000, n_mels=40)
    wave = torch.randn(3, 8000, generator=torch.Generator().manual_seed(0))
    expected = frontend.mel(wave)  # (3, 40, 101)
    torch.testing.assert_close(frontend.power_mel(wave), expected, rtol=1e-4, atol=1e-4 * float(expected.max()))
    explained = torch._dynamo.explain(frontend)(wave)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def test_log_mel_voiced_statistics_do_not_depend_on_the_padding():
    """With `voiced_db` the per-band mean and the scale come from the frames near the loudest, so the same
    utterance padded with more silence gives the same spectrogram; the default statistics include the padding."""
    from fusion.encoders.audio import LogMel

    t = torch.arange(2400) / 8000
    burst = torch.sin(2 * torch.pi * 440 * t) * torch.hann_window(2400) + 0.3 * torch.sin(2 * torch.pi * 1500 * t)
    short, long = torch.zeros(1, 4000), torch.zeros(1, 8000)  # the same 0.3 s of sound in 0.5 s and 1 s
    short[0, 800:3200] = long[0, 800:3200] = burst
    voiced = LogMel(top_db=80, voiced_db=30)
    frames = voiced(short).shape[-1] - 2  # the last frame of the shorter clip sees its reflected end
    torch.testing.assert_close(voiced(long)[..., :frames], voiced(short)[..., :frames], rtol=1e-4, atol=1e-4)
    plain = LogMel()
    assert (plain(long)[..., :frames] - plain(short)[..., :frames]).abs().max() > 0.1


def test_log_mel_dft_convolution_equals_the_stft_power_and_is_what_export_traces():
    """The strided convolution with the windowed DFT basis gives torch.stft's power (odd lengths too), the basis
    is not in the state dict, and an exported program holds the convolution, not an STFT."""
    from fusion.encoders.audio import LogMel

    frontend = LogMel(sample_rate=8000, n_mels=40)
    spectrogram = frontend.mel.spectrogram
    assert "dft_basis" not in frontend.state_dict()
    for length in (8000, 4321):
        wave = torch.randn(2, length, generator=torch.Generator().manual_seed(length))
        stft = torch.stft(wave, spectrogram.n_fft, spectrogram.hop_length, spectrogram.win_length, spectrogram.window,
                          center=True, pad_mode="reflect", return_complex=True)
        expected = stft.abs().square()  # (2, 129, T)
        got = frontend.dft_power(wave)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.max()))
    wave = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    program = torch.export.export(frontend, (wave,))
    ops = {str(node.target) for module in program.graph_module.modules() if isinstance(module, torch.fx.GraphModule)
           for node in module.graph.nodes}  # the autocast-free region is a submodule
    assert any("conv1d" in op or "convolution" in op for op in ops) and not any("stft" in op for op in ops), ops
    torch.testing.assert_close(program.module()(wave), frontend(wave), rtol=1e-4, atol=1e-4)
