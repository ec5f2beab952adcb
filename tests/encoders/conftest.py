"""Tiny randomly initialised pretrained-format towers, saved as a user would have them (no download):
transformers models and processors via save_pretrained, a torchvision state dict, a timm weights file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

MEAN, STD = [0.2, 0.3, 0.4], [0.5, 0.25, 0.2]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789",
         "the", "digit", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "a",
         "spoken", "handwritten", "number", "##s", "##e", "##n"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Everything here works from local files only."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    """A 2-layer ViT at 24 px whose processor normalises with distinctive mean/std."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=24, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 24, "width": 24}, image_mean=MEAN, image_std=STD).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_wav2vec2(tmp_path_factory) -> Path:
    """A 2-layer wav2vec2 (layer-norm feature encoder, so it takes an attention mask) at 16 kHz."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    folder = tmp_path_factory.mktemp("wav2vec2")
    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 8),
                            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                            do_stable_layer_norm=True, mask_time_prob=0.0)
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT with a small word-piece vocabulary and its tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("bert")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def resnet18_file(tmp_path_factory) -> Path:
    """A torchvision resnet18 state dict (random weights) as a user's local weights file."""
    import torchvision

    path = tmp_path_factory.mktemp("tv") / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def timm_file(tmp_path_factory) -> Path:
    """timm's tiny test ViT (random weights) saved as a safetensors file."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("timm") / "test_vit.safetensors"
    torch.manual_seed(0)
    save_file(timm.create_model("test_vit", pretrained=False).state_dict(), str(path))
    return path
