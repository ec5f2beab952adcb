"""Convolutional `hf:` image towers (ResNet, ConvNeXt; tiny random models saved locally, no download): the
embedding is the model's own pooled output, the tokens are the positions of its (B, C, h, w) map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fusion.encoders.pretrained import PretrainedEncoder
from fusion.errors import ConfigError

CHANNELS, SIDE = 16, 32  # last stage width; processor crop side -> an 8 x 8 map after ResNet's stride 4 (embedder)


def save_tower(folder: Path, family: str) -> Path:
    """A two-stage model with the processor microsoft/resnet-50 and facebook/convnext-tiny-224 ship."""
    from transformers import ConvNextConfig, ConvNextImageProcessor, ConvNextModel, ResNetConfig, ResNetModel

    torch.manual_seed(0)
    if family == "resnet":
        model = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, CHANNELS], depths=[1, 1],
                                         layer_type="basic"))
    else:
        model = ConvNextModel(ConvNextConfig(hidden_sizes=[8, CHANNELS], depths=[1, 1], num_stages=2))
    model.save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": SIDE}, crop_pct=0.875).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["resnet", "convnext"])
def conv_tower(request, tmp_path_factory) -> Path:
    return save_tower(tmp_path_factory.mktemp(request.param), request.param)


def pixel_values(folder: Path, n: int = 2) -> torch.Tensor:
    """The processor's own output for n random RGB images of different shapes."""
    from transformers import AutoImageProcessor

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(n)]
    return AutoImageProcessor.from_pretrained(folder, local_files_only=True)(images, return_tensors="pt").pixel_values


def reference(folder: Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(folder, local_files_only=True).eval()


def test_embedding_is_the_models_pooled_output_and_tokens_its_positions(conv_tower):
    x = pixel_values(conv_tower)  # (2, 3, 32, 32)
    assert x.shape == (2, 3, SIDE, SIDE)
    encoder = PretrainedEncoder("image", f"hf:{conv_tower}").eval()
    assert encoder.out_dim == CHANNELS
    with torch.no_grad():
        out = reference(conv_tower)(pixel_values=x)
        embedding, tokens = encoder(x), encoder.forward_tokens(x)
    own = out.pooler_output.flatten(1)  # (B, C): ResNet's average pool, ConvNeXt's norm of the spatial mean
    assert embedding.shape == (2, CHANNELS)
    torch.testing.assert_close(embedding, own)
    b, c, h, w = out.last_hidden_state.shape
    assert tokens.shape == (b, h * w, c) and h * w > 1
    torch.testing.assert_close(tokens, out.last_hidden_state.flatten(2).transpose(1, 2))


def test_gradients_reach_every_parameter(conv_tower):
    encoder = PretrainedEncoder("image", f"hf:{conv_tower}", out_dim=4).train()
    x = pixel_values(conv_tower)
    (encoder(x).square().sum() + encoder.forward_tokens(x).square().mean()).backward()
    missing = [n for n, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient: {missing}"


def test_explicit_pooling_options(conv_tower):
    x = pixel_values(conv_tower)
    with torch.no_grad():
        out = reference(conv_tower)(pixel_values=x)
        mean = PretrainedEncoder("image", f"hf:{conv_tower}", pooling="mean").eval()(x)
        pooler = PretrainedEncoder("image", f"hf:{conv_tower}", pooling="pooler").eval()(x)
    torch.testing.assert_close(mean, out.last_hidden_state.mean((2, 3)))  # (B, C)
    torch.testing.assert_close(pooler, out.pooler_output.flatten(1))
    with pytest.raises(ConfigError, match="without a CLS token"):
        PretrainedEncoder("image", f"hf:{conv_tower}", pooling="cls")(x)
