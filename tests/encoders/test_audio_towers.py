"""Whisper's encoder, AST and CLAP's audio branch as `hf:<folder>` audio towers (tiny random models saved locally,
no download): the data module's sample rate and features come from the tower's extractor, padding stays out of
the embedding, CLAP gives its audio embedding, gradients flow and freezing holds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fusion.data.datamodule import ManifestDataModule
from fusion.data.dataset import AudioBatcher
from fusion.encoders.pretrained import PretrainedEncoder

TOWERS = ["tiny_whisper", "tiny_ast", "tiny_clap", "tiny_clap_fused"]
SHAPES = {"tiny_whisper": (80, 200), "tiny_ast": (100, 32), "tiny_clap": (1, 101, 16), "tiny_clap_fused": (4, 101, 64)}


def extractor(folder):
    from transformers import AutoFeatureExtractor

    return AutoFeatureExtractor.from_pretrained(str(folder))


def batcher(folder) -> AudioBatcher:
    """The data module's batcher for this tower, as it builds it from the tower's preprocessing."""
    prep = PretrainedEncoder.preprocessing("audio", f"hf:{folder}")
    return AudioBatcher(prep.sample_rate, prep.feature_extractor, prep.padding, prep.extra)


@pytest.mark.parametrize("fixture", TOWERS)
def test_sample_rate_and_features_come_from_the_extractor(fixture, request, tiny_digits):
    folder = request.getfixturevalue(fixture)
    reference = extractor(folder)
    dm = ManifestDataModule(str(tiny_digits), modalities=["audio"], batch_size=4, augment=False, audio_seconds=0.5,
                            towers={"audio": f"hf:{folder}"}, on_error="skip")  # clips shorter than every window
    dm.prepare()
    assert dm.sample_rate == reference.sampling_rate  # 16 kHz, CLAP 48 kHz, from the 8 kHz files
    batch = next(iter(dm.test_dataloader()))["audio"]
    key = "input_features" if "input_features" in batch else "input_values"
    assert batch[key].shape == (4, *SHAPES[fixture])  # each tower's fixed window
    waves = [dm.datasets["test"].decode(i, "audio").numpy() for i in range(4)]
    assert all(len(w) == dm.sample_rate // 2 for w in waves)
    expected = reference(waves, sampling_rate=reference.sampling_rate, return_tensors="pt")  # its own padding
    # the batch was resampled in a DataLoader worker (one thread), `waves` here: float rounding of the resampler,
    # which CLAP's log-mel magnifies to a relative 1e-3 at most; a wrong rate or padding differs everywhere
    torch.testing.assert_close(batch[key], expected[key].float(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("fixture", TOWERS)
def test_a_clip_embeds_the_same_alone_and_next_to_a_longer_one(fixture, request):
    folder = request.getfixturevalue(fixture)
    encoder = PretrainedEncoder("audio", f"hf:{folder}").eval()
    batch = batcher(folder)
    torch.manual_seed(0)
    short, long = torch.randn(4000), torch.randn(20000)  # both inside every window (CLAP: 1 s at 48 kHz)
    with torch.no_grad():
        alone = encoder(batch([short]))
        padded = encoder(batch([short, long]))[:1]
    torch.testing.assert_close(padded, alone, atol=1e-4, rtol=1e-4)


def test_whisper_pools_only_the_frames_of_the_clip(tiny_whisper):
    encoder = PretrainedEncoder("audio", f"hf:{tiny_whisper}").eval()
    samples = 4000
    with torch.no_grad():
        tokens, mask, pooled = encoder.backbone(batcher(tiny_whisper)([torch.randn(samples)]))
    assert tokens.shape == (1, 100, 32)  # the whole 2 s window: 200 log-mel frames, halved by the encoder
    frames = math.ceil(math.ceil(samples / 160) / 2)  # 10 ms hop, stride 2
    assert int(mask.sum()) == frames and bool(mask[0, :frames].all())
    torch.testing.assert_close(pooled, tokens[:, :frames].mean(1))


@pytest.mark.parametrize("fixture", ["tiny_clap", "tiny_clap_fused"])
def test_clap_gives_its_audio_embedding(fixture, request):
    from transformers import ClapModel

    folder = request.getfixturevalue(fixture)
    encoder = PretrainedEncoder("audio", f"hf:{folder}").eval()
    assert encoder.out_dim == 16  # projection_dim: the joint audio-text space
    assert not any("text" in name for name in encoder.state_dict())  # the text branch is not kept
    torch.manual_seed(0)
    waves = [torch.randn(8000).numpy(), torch.randn(60000).numpy()]  # the second exceeds the 1 s window
    inputs = extractor(folder)(waves, sampling_rate=48000, return_tensors="pt")
    clap = ClapModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        expected = F.normalize(clap.get_audio_features(**inputs).pooler_output, dim=-1)
        embedding = encoder({"input_features": inputs["input_features"]})
    torch.testing.assert_close(embedding, expected)
    assert encoder.forward_tokens({"input_features": inputs["input_features"]}).shape[-1] == 16


@pytest.mark.parametrize("fixture", ["tiny_whisper", "tiny_ast", "tiny_clap"])
def test_gradients_reach_the_tower_and_freezing_keeps_it(fixture, request):
    folder = request.getfixturevalue(fixture)
    batch = batcher(folder)([torch.randn(6000), torch.randn(9000), torch.randn(3000)])
    torch.manual_seed(0)
    encoder = PretrainedEncoder("audio", f"hf:{folder}", out_dim=8).train()
    out = encoder(batch)
    assert out.shape == (3, 8)
    out.square().mean().backward()
    missing = [n for n, p in encoder.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing

    frozen = PretrainedEncoder("audio", f"hf:{folder}", out_dim=8, freeze=True).train()
    before = {k: v.clone() for k, v in frozen.backbone.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in frozen.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        frozen(batch).square().mean().backward()
        optimizer.step()
    after = frozen.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and CLAP's batch-norm statistics
