"""Hugging Face towers (`hf:<hub id or folder>`): transformers' AutoModel with its AutoImageProcessor,
AutoFeatureExtractor (wav2vec2, HuBERT, WavLM, AST, Whisper's encoder, CLAP's audio branch) or AutoTokenizer.

Image embeddings: the model's own pooled output (ResNet, ConvNeXt: the mean over the positions of its (B, C, h, w)
map, whose positions are the tokens), the CLS token where the pooler is a dense head on it (ViT).

Audio embeddings: the mean over the encoder frames that hold the clip (padding masked; Whisper sees its 30 s
window but pools only the frames of the clip), the model's own pooled output where it has one (AST: the mean of
its CLS and distillation tokens), and for CLAP the audio branch's pooled output through CLAP's audio projection,
L2-normalised (the vector ClapModel compares with its text embeddings).

Ids resolve through the Hugging Face cache; a folder, or `HF_HUB_OFFLINE=1`, means local files only. Remote
code runs only with trust_remote_code; weights load as safetensors where the repository has them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fusion.encoders.finetune import find_blocks
from fusion.encoders.preprocessing import AudioPreprocessing, ImagePreprocessing, TextPreprocessing
from fusion.encoders.towers import TowerName
from fusion.errors import ConfigError, MissingFileError

PIL_TO_MODE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL resampling codes of image processors


def hub_options(name: str, trust_remote_code: bool = False) -> dict:
    """from_pretrained keyword arguments: local files only for a folder or under HF_HUB_OFFLINE."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")
    return {"local_files_only": offline or Path(name).expanduser().is_dir(), "trust_remote_code": trust_remote_code}


def source(name: str) -> str:
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name.startswith(("/", ".", "~")):
        raise MissingFileError(f"hf:{name}: folder '{path}' does not exist")
    return name


def load(loader, name: str, what: str, trust_remote_code: bool = False, **kwargs):
    """`loader.from_pretrained` with a MissingFileError naming the tower and what is missing."""
    try:
        return loader.from_pretrained(source(name), **hub_options(name, trust_remote_code), **kwargs)
    except (OSError, ValueError) as err:
        where = "the folder" if Path(name).expanduser().is_dir() else "the Hugging Face cache (HF_HUB_OFFLINE=1: local files only)"
        raise MissingFileError(f"hf:{name}: no {what} found in {where}; download it once with network access or "
                               f"name a folder saved with save_pretrained ({type(err).__name__}: {err})") from None


def preprocessing(modality: str, tower: TowerName, trust_remote_code: bool = False):
    from transformers import AutoFeatureExtractor, AutoImageProcessor

    if modality == "text":
        load_tokenizer_check(tower.name, trust_remote_code)
        return TextPreprocessing(tokenizer=source(tower.name), extra=hub_options(tower.name, trust_remote_code))
    if modality == "image":
        proc = load(AutoImageProcessor, tower.name, "image processor", trust_remote_code)
        size, crop = proc.size, getattr(proc, "crop_size", None)
        side = (size.get("height") if hasattr(size, "get") else None) or getattr(size, "height", None)
        shortest = (size.get("shortest_edge") if hasattr(size, "get") else None) or getattr(size, "shortest_edge", None)
        crop_side = None
        if getattr(proc, "do_center_crop", False) and crop is not None:
            crop_side = (crop.get("height") if hasattr(crop, "get") else None) or getattr(crop, "height", None)
        if side:  # resized straight to height x width (ViT)
            resize, final = None, int(side)
        elif getattr(proc, "crop_pct", None) and shortest and int(shortest) < 384:  # ConvNeXt-style resize + crop
            resize, final = int(int(shortest) / proc.crop_pct), int(shortest)
        else:
            resize, final = int(shortest), int(crop_side or shortest)
            resize = None if resize == final and not crop_side else resize
        mean = tuple(float(v) for v in (proc.image_mean if getattr(proc, "do_normalize", True) else (0, 0, 0)))
        std = tuple(float(v) for v in (proc.image_std if getattr(proc, "do_normalize", True) else (1, 1, 1)))
        mode = PIL_TO_MODE.get(int(getattr(proc, "resample", 2) or 2), "bilinear")
        return ImagePreprocessing(crop=final, resize=resize, channels=3, mean=mean, std=std, interpolation=mode)
    extractor = load(AutoFeatureExtractor, tower.name, "feature extractor", trust_remote_code)
    padding = getattr(extractor, "padding", None)  # CLAP's own: "repeatpad", the clip repeated over its window
    if getattr(extractor, "n_samples", None):  # Whisper: its fixed 30 s window
        padding = "max_length"
    elif not isinstance(padding, str):  # wav2vec2, HuBERT, WavLM: the longest clip of the batch (AST: its max_length)
        padding = "longest"
    return AudioPreprocessing(
        sample_rate=int(extractor.sampling_rate), variable_length=True, feature_extractor=source(tower.name),
        padding=padding, extra=hub_options(tower.name, trust_remote_code))


def load_tokenizer_check(name: str, trust_remote_code: bool) -> None:
    """Fails early (before data are read) when the tokenizer's files are missing."""
    from transformers import AutoTokenizer

    load(AutoTokenizer, name, "tokenizer", trust_remote_code)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return tokens.mean(1)
    w = mask.unsqueeze(-1).to(tokens.dtype)  # (B, T, 1)
    return (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)


class HFTower(nn.Module):
    """AutoModel of one modality -> (tokens (B, T, H), mask (B, T) or None, pooled (B, H))."""

    def __init__(self, modality: str, name: str, pooling: str = "auto", trust_remote_code: bool = False):
        super().__init__()
        from transformers import AutoFeatureExtractor, AutoModel

        model = load(AutoModel, name, "model (config.json + weights)", trust_remote_code)
        if getattr(model.config, "is_encoder_decoder", False):  # Whisper: the audio encoder only
            model = model.get_encoder()
        projection, dim = None, None
        if modality == "audio" and hasattr(model, "audio_model") and hasattr(model, "audio_projection"):
            # CLAP (audio + text): the audio branch and its projection into the joint space; the text branch is dropped
            projection, dim, model = model.audio_projection, int(model.config.projection_dim), model.audio_model
        self.modality = modality
        if pooling == "auto":  # audio: mean over frames without a pooler
            pooling = image_pooling(model) if modality == "image" else {"audio": "pooler"}.get(modality, "mean")
        self.pooling = pooling
        pooler = getattr(model, "pooler", None)
        if self.pooling != "pooler" and pooler is not None and any(True for _ in pooler.parameters()):
            model.pooler = None  # unused (ViT, BERT): its weights would get no gradient; ResNet calls its own always
        self.model = model
        self.projection = projection
        config = model.config
        self.dim = dim or int(getattr(config, "hidden_size", 0) or getattr(config, "d_model", 0)
                              or config.hidden_sizes[-1])
        self.pass_audio_mask = False
        if modality == "audio":
            extractor = load(AutoFeatureExtractor, name, "feature extractor", trust_remote_code)
            self.pass_audio_mask = bool(getattr(extractor, "return_attention_mask", False))

    def blocks(self) -> list[nn.Module]:
        return find_blocks(self.model)

    def enable_gradient_checkpointing(self) -> bool:
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            return False
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return True

    def forward(self, value) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        if self.modality == "text":
            mask = value["attention_mask"]  # (B, T)
            out = self.model(input_ids=value["input_ids"], attention_mask=mask)
        elif self.modality == "audio":
            out = self.model(**self._audio_inputs(value))
            hidden = out.last_hidden_state
            frames = hidden.shape[1] if hidden.dim() == 3 else 0  # CLAP's (B, C, h, w) maps have no frame mask
            mask = self._frame_mask(frames, value.get("attention_mask"))
        else:
            out, mask = self.model(pixel_values=value), None
        hidden = out.last_hidden_state
        if hidden.dim() == 4:  # conv nets, CLAP's audio branch: (B, C, h, w) -> (B, hw, C)
            if self.pooling == "cls":
                raise ConfigError(f"model.encoders.{self.modality}.pooling=cls: {type(self.model).__name__} gives a "
                                  f"(B, C, h, w) map without a CLS token; use auto, mean or pooler")
            hidden = hidden.flatten(2).transpose(1, 2)
        pooled = getattr(out, "pooler_output", None)
        if self.projection is not None:  # CLAP: the audio embedding, unit length as CLAP compares it
            hidden = F.normalize(self.projection(hidden), dim=-1)  # (B, T, P)
            pooled = F.normalize(self.projection(pooled), dim=-1)  # (B, P)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "mean" or pooled is None:
            pooled = masked_mean(hidden, mask)
        return hidden, mask, pooled.flatten(1)

    def _audio_inputs(self, value: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {k: value[k] for k in ("input_values", "input_features") if k in value}
        if self.pass_audio_mask and "attention_mask" in value:
            inputs["attention_mask"] = value["attention_mask"]
        if getattr(self.model.config, "enable_fusion", False):  # fused CLAP: which clips exceed its 10 s window
            inputs["is_longer"] = longer_than_window(value["input_features"])
        return inputs

    def _frame_mask(self, frames: int, mask: torch.Tensor | None) -> torch.Tensor | None:
        """Sample- or feature-level attention mask (B, L) -> frame mask (B, T') of the encoder's outputs."""
        if mask is None or not frames:
            return None
        to_frames = getattr(self.model, "_get_feature_vector_attention_mask", None)
        if to_frames is not None:  # wav2vec2, HuBERT, WavLM: through the conv feature encoder's lengths
            return to_frames(frames, mask).bool()
        if mask.shape[1] % frames == 0:  # Whisper: feature frames (B, 3000), the encoder halves them (B, 1500)
            return mask[:, :: mask.shape[1] // frames].bool()
        return None


def image_pooling(model: nn.Module) -> str:
    """`pooling=auto` of an image model: its own pooled output (ResNet, ConvNeXt: the mean over positions,
    ConvNeXt's through its final norm), except a dense head on the CLS token (ViT's pooler, absent from
    classification checkpoints): the CLS token then."""
    pooler = getattr(model, "pooler", None)
    dense = pooler is not None and any(isinstance(m, nn.Linear) for m in pooler.modules())
    return "cls" if dense else "pooler"


def longer_than_window(features: torch.Tensor) -> torch.Tensor:
    """Fused CLAP's `is_longer` (B, 1) from its features (B, 4, T, F): the extractor stacks four copies of a clip
    that fits the window, and the whole clip plus three crops of a longer one. (The extractor's own flag marks a
    random clip when none is longer, which would make an embedding depend on its batch.)"""
    return (features[:, :1] != features[:, 1:]).flatten(1).any(1, keepdim=True)


def build(modality: str, tower: TowerName, pooling: str = "auto", trust_remote_code: bool = False) -> HFTower:
    return HFTower(modality, tower.name, pooling, trust_remote_code)
