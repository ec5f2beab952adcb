"""timm towers (`timm:<name>[:none|:<file>]`, optional extra `pretrained`): `timm.create_model` without its
classifier; preprocessing from the model's pretrained config (input size, crop, mean/std, interpolation).

Pretrained weights come through the Hugging Face hub cache (HF_HUB_OFFLINE honoured).
"""

from __future__ import annotations

import timm
import timm.data
import torch
from torch import nn

from fusion.encoders.finetune import find_blocks
from fusion.encoders.preprocessing import ImagePreprocessing
from fusion.encoders.towers import TowerName
from fusion.errors import ConfigError, MissingFileError


def _check(modality: str, tower: TowerName) -> None:
    if modality != "image":
        raise ConfigError(f"timm: towers are image towers, not {modality} (use hf: for {modality})")
    if not timm.list_models(tower.name) and not timm.is_model(tower.name):
        raise ConfigError(f"timm:{tower.name}: not a timm model (see timm.list_models())")


def preprocessing(modality: str, tower: TowerName, trust_remote_code: bool = False) -> ImagePreprocessing:
    _check(modality, tower)
    pretrained = timm.models.get_pretrained_cfg(tower.name)
    cfg = timm.data.resolve_data_config(pretrained_cfg=pretrained.to_dict() if pretrained else {})
    crop = int(cfg["input_size"][-1])
    resize = int(round(crop / cfg.get("crop_pct", 1.0)))
    return ImagePreprocessing(crop=crop, resize=resize if resize != crop else None, channels=int(cfg["input_size"][0]),
                              mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                              interpolation=cfg.get("interpolation", "bicubic") if cfg.get("interpolation") in
                              ("nearest", "bilinear", "bicubic") else "bicubic")


class TimmTower(nn.Module):
    """A timm model without classifier: images -> tokens (B, T, H) and its own pooled features (B, H)."""

    def __init__(self, tower: TowerName):
        super().__init__()
        kwargs: dict = {"num_classes": 0, "pretrained": not tower.random_init}
        if tower.weights_file:
            from pathlib import Path

            path = Path(tower.weights_file).expanduser()
            if not path.is_file():
                raise MissingFileError(f"timm:{tower.name}: weights file '{path}' does not exist")
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        try:
            self.model = timm.create_model(tower.name, **kwargs)
        except (OSError, RuntimeError) as err:
            raise MissingFileError(f"timm:{tower.name}: cannot load its pretrained weights from the Hugging Face "
                                   f"cache (HF_HUB_OFFLINE=1: local files only): {type(err).__name__}: {err}; "
                                   f"use timm:{tower.name}:<file> or timm:{tower.name}:none") from None
        self.dim = int(self.model.num_features)

    def blocks(self) -> list[nn.Module]:
        return find_blocks(self.model)

    def enable_gradient_checkpointing(self) -> bool:
        self.model.set_grad_checkpointing(True)
        return True

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor]:
        features = self.model.forward_features(images)  # (B, C, h, w) or (B, T, H)
        pooled = self.model.forward_head(features, pre_logits=True)  # (B, H)
        tokens = features.flatten(2).transpose(1, 2) if features.dim() == 4 else features  # (B, T, H)
        return tokens, None, pooled


def build(modality: str, tower: TowerName, pooling: str = "auto", trust_remote_code: bool = False) -> TimmTower:
    _check(modality, tower)
    return TimmTower(tower)
