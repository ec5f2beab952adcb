"""PretrainedEncoder: a Hugging Face, torchvision or timm network as the tower of one modality, with the
fine-tuning controls (freeze, unfreeze the last N blocks, lower / layer-wise learning rate, gradient
checkpointing).

The network comes from a tower name (fusion/encoders/towers.py); its framework adapter (hf_towers, tv_towers,
timm_towers) maps the modality's batch value to tokens (B, T, H), their mask and a pooled (B, H) vector.
"""

from __future__ import annotations

import torch
from torch import nn

from fusion.encoders.finetune import (
    checkpoint_blocks,
    depth_scales,
    freeze_batch_statistics,
    set_trainable,
)
from fusion.encoders.preprocessing import Preprocessing
from fusion.encoders.towers import adapter_module, parse_tower
from fusion.errors import ConfigError

MODALITIES = ("image", "audio", "text")


def _check(modality: str, pooling: str) -> None:
    if modality not in MODALITIES:
        raise ConfigError(f"PretrainedEncoder.modality must be one of {MODALITIES}, got '{modality}'")
    if pooling not in ("auto", "mean", "cls", "pooler"):
        raise ConfigError(f"model.encoders.{modality}.pooling must be auto, mean, cls or pooler, got '{pooling}'")


class PretrainedEncoder(nn.Module):
    """One modality's batch value -> pooled features (B, out_dim); `forward_tokens` gives (B, T, out_dim).

    Args:
        modality: "image", "audio" or "text" (what the batch value is).
        tower: tower name, e.g. "hf:google/vit-base-patch16-224", "tv:resnet50", "timm:convnext_tiny".
        out_dim: size of a linear projection after the tower; None = the tower's own feature size.
        freeze: keep the tower's weights (and batch-norm statistics) fixed.
        unfreeze_last: with freeze, train the last N blocks again (and the norms after them).
        lr_scale: learning rate of the tower's weights relative to the task's lr (the projection keeps 1).
        layer_decay: layer-wise decay: block i of n learns at lr_scale * layer_decay ** (n - i); 1 = off.
        gradient_checkpointing: recompute the tower's activations in the backward pass (less memory).
        pooling: auto (image: the model's own pooled output (ResNet, ConvNeXt: over the positions), the CLS
            token where its pooler is a dense head on it (ViT); audio: the model's pooled output where it
            has one (AST, CLAP), else the mean over the frames of the clip; text: mean over the mask), mean, cls or
            pooler.
        image_size: input side for image towers; None = the tower's processor / weights.
        trust_remote_code: allow hub code of hf towers (off: only transformers' own classes run).
    """

    def __init__(self, modality: str = "image", tower: str = "tv:resnet18", out_dim: int | None = None,
                 freeze: bool = False, unfreeze_last: int = 0, lr_scale: float = 0.1, layer_decay: float = 1.0,
                 gradient_checkpointing: bool = False, pooling: str = "auto", image_size: int | None = None,
                 trust_remote_code: bool = False):
        super().__init__()
        _check(modality, pooling)
        if unfreeze_last < 0 or lr_scale < 0 or not 0 < layer_decay <= 1:
            raise ConfigError(f"model.encoders.{modality}: need unfreeze_last >= 0, lr_scale >= 0 and "
                              f"0 < layer_decay <= 1 (got {unfreeze_last}, {lr_scale}, {layer_decay})")
        name = parse_tower(tower, f"model.encoders.{modality}")
        self.modality, self.tower = modality, str(name)
        self.backbone = adapter_module(name).build(modality, name, pooling=pooling, trust_remote_code=trust_remote_code)
        self.blocks = self.backbone.blocks()
        if unfreeze_last > len(self.blocks):
            raise ConfigError(f"model.encoders.{modality}.unfreeze_last={unfreeze_last}, but '{tower}' has "
                              f"{len(self.blocks)} blocks")
        set_trainable(self.backbone, self.blocks, freeze, unfreeze_last)
        self.frozen = freeze
        if gradient_checkpointing and not self.backbone.enable_gradient_checkpointing():
            checkpoint_blocks(self.blocks)
        self.lr_scale, self.layer_decay = lr_scale, layer_decay
        self.proj = nn.Linear(self.backbone.dim, out_dim) if out_dim else nn.Identity()
        self.out_dim = out_dim or self.backbone.dim

    @classmethod
    def preprocessing(cls, modality: str = "image", tower: str = "tv:resnet18", image_size: int | None = None,
                      trust_remote_code: bool = False, pooling: str = "auto", **_options) -> Preprocessing:
        """What the tower needs as input, read from its processor / weights metadata (the network is not built)."""
        _check(modality, pooling)
        name = parse_tower(tower, f"model.encoders.{modality}")
        prep = adapter_module(name).preprocessing(modality, name, trust_remote_code=trust_remote_code)
        return prep.with_size(image_size) if image_size and modality == "image" else prep

    def train(self, mode: bool = True) -> PretrainedEncoder:
        super().train(mode)
        if mode and self.frozen:
            freeze_batch_statistics(self.backbone)
        return self

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers of the tower's parameters (names relative to this module)."""
        scales = depth_scales(self.backbone, self.blocks, self.lr_scale, self.layer_decay)
        return {f"backbone.{name}": scale for name, scale in scales.items()}

    def forward_tokens(self, value: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        tokens, _, _ = self.backbone(value)  # (B, T, H)
        return self.proj(tokens)  # (B, T, D)

    def forward(self, value: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        _, _, pooled = self.backbone(value)  # (B, H)
        return self.proj(pooled)  # (B, D)
