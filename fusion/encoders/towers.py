"""Tower names: one grammar for a pretrained encoder of any modality, and asking an encoder config what input
it needs.

    hf:<hub id or folder>              transformers AutoModel (+ its image processor, feature extractor or tokenizer)
    tv:<name>[:<weights>|:none|:<file>]   torchvision model: DEFAULT weights, a weights enum member, random, a file
    timm:<name>[:none|:<file>]         timm model: its pretrained weights, random, a local file

A tower name stands wherever an encoder config does: `model.encoders.image=tv:resnet18` becomes
`PretrainedEncoder(modality="image", tower="tv:resnet18")` with its defaults (`encoder_config`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from fusion.encoders.preprocessing import Preprocessing
from fusion.errors import ConfigError

PRETRAINED_TARGET = "fusion.encoders.pretrained.PretrainedEncoder"

# framework prefix -> module that builds its towers (imported on use: timm is an optional dependency)
ADAPTERS = {"hf": "fusion.encoders.hf_towers", "tv": "fusion.encoders.tv_towers", "timm": "fusion.encoders.timm_towers"}


@dataclass(frozen=True)
class TowerName:
    """A parsed tower name.

    framework: "hf", "tv" or "timm".
    name: hub id or local folder (hf), model name (tv, timm).
    weights: tv/timm only: None = the model's pretrained (tv: DEFAULT) weights, "none" = random init, a weights
        enum member (tv, e.g. "IMAGENET1K_V2") or a local weights file (.pth/.pt/.bin/.safetensors).
    """

    framework: str
    name: str
    weights: str | None = None

    @property
    def random_init(self) -> bool:
        return self.weights is not None and self.weights.lower() == "none"

    @property
    def weights_file(self) -> str | None:
        """The local weights file, if `weights` names one."""
        w = self.weights
        return w if w is not None and ("/" in w or w.endswith((".pth", ".pt", ".bin", ".safetensors"))) else None

    def __str__(self) -> str:
        return f"{self.framework}:{self.name}" + (f":{self.weights}" if self.weights else "")


def parse_tower(spec: str, key: str = "tower") -> TowerName:
    """`hf:google/vit-base-patch16-224` -> TowerName("hf", "google/vit-base-patch16-224"); `key` names the setting
    in errors."""
    framework, sep, rest = str(spec).partition(":")
    if not sep or framework not in ADAPTERS or not rest:
        raise ConfigError(f"{key}: '{spec}' is not a tower name; use hf:<hub id or folder>, tv:<torchvision name> "
                          "or timm:<timm name> (e.g. model.encoders.image=tv:resnet18)")
    if framework == "hf":
        return TowerName("hf", rest)
    name, _, weights = rest.partition(":")
    return TowerName(framework, name, weights or None)


def adapter_module(tower: TowerName):
    """The module with `build(modality, tower, ...)` and `preprocessing(modality, tower, ...)` for its framework."""
    try:
        return importlib.import_module(ADAPTERS[tower.framework])
    except ImportError as err:
        raise ConfigError(f"tower '{tower}' needs the optional package '{err.name}': pip install 'fusion[pretrained]'"
                          ) from None


def encoder_config(modality: str, value: str | dict) -> dict:
    """A tower name -> the PretrainedEncoder config with its defaults; an encoder config dict is returned as it is."""
    if isinstance(value, str):
        parse_tower(value, f"model.encoders.{modality}")
        return {"_target_": PRETRAINED_TARGET, "modality": modality, "tower": value}
    return dict(value)


def encoder_preprocessing(modality: str, value: str | dict) -> Preprocessing | None:
    """What the encoder configured by `value` (a tower name or a config with `_target_`) needs as input, from its
    class's `preprocessing(**config)`; None when the class does not say."""
    config = encoder_config(modality, value)
    module_name, _, class_name = str(config.get("_target_", "")).rpartition(".")
    if not module_name:
        return None
    cls = getattr(importlib.import_module(module_name), class_name, None)
    ask = getattr(cls, "preprocessing", None)
    if ask is None:
        return None
    return ask(**{k: v for k, v in config.items() if not k.startswith("_")})
