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
def tiny_whisper(tmp_path_factory) -> Path:
    """A 2-layer Whisper whose feature extractor pads to a 2 s window (200 log-mel frames; the real one: 30 s)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    folder = tmp_path_factory.mktemp("whisper")
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                           max_source_positions=100, max_target_positions=16, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, decoder_start_token_id=3)
    WhisperModel(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, chunk_length=2).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_ast(tmp_path_factory) -> Path:
    """A 2-layer Audio Spectrogram Transformer over 100 frames x 32 mel bins (the real one: 1024 x 128)."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    folder = tmp_path_factory.mktemp("ast")
    torch.manual_seed(0)
    ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       num_mel_bins=32, max_length=100, frequency_stride=16, time_stride=16)).save_pretrained(folder)
    ASTFeatureExtractor(num_mel_bins=32, max_length=100, sampling_rate=16000).save_pretrained(folder)
    return folder


def save_tiny_clap(folder: Path, fused: bool) -> Path:
    """A CLAP (HTSAT audio branch + a 1-layer text branch) at 48 kHz with a 1 s window (the real one: 10 s).
    Fused: four-channel features and the 64 mel bins the extractor's fusion path assumes."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(0)
    mels = 64 if fused else 16
    audio = dict(spec_size=128 if fused else 64, num_mel_bins=mels, patch_size=4, patch_stride=(4, 4), window_size=4,
                 hidden_size=32, patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[2, 2],
                 enable_fusion=fused)
    text = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=40)
    ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16)).save_pretrained(folder)
    ClapFeatureExtractor(feature_size=mels, sampling_rate=48000, max_length_s=1,
                         truncation="fusion" if fused else "rand_trunc").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clap(tmp_path_factory) -> Path:
    """Like laion/clap-htsat-unfused: one spectrogram channel, clips longer than the window randomly cropped."""
    return save_tiny_clap(tmp_path_factory.mktemp("clap"), fused=False)


@pytest.fixture(scope="session")
def tiny_clap_fused(tmp_path_factory) -> Path:
    """Like laion/clap-htsat-fused: a longer clip is the whole clip shrunk plus three crops, fused in the model."""
    return save_tiny_clap(tmp_path_factory.mktemp("clap_fused"), fused=True)


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
