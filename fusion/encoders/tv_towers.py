"""torchvision towers (`tv:<name>[:<weights>|:none|:<file>]`): any classification model of
`torchvision.models`, its last linear layer removed; preprocessing from `weights.transforms()`.

Weights come from the torch hub cache (`TORCH_HOME`); when the file is not there and HF_HUB_OFFLINE is set,
or the download fails, the error names the file and where to put it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from fusion.encoders.finetune import find_blocks
from fusion.encoders.preprocessing import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocessing
from fusion.encoders.towers import TowerName
from fusion.errors import ConfigError, MissingFileError

HEADS = ("fc", "heads", "classifier", "head")


def weights_enum(tower: TowerName):
    """The weights enum member the name asks for (None: random init or a local file), and the DEFAULT member
    for preprocessing metadata (None when the model has no weights)."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(tower.name)
    except ValueError:
        raise ConfigError(f"tv:{tower.name}: not a torchvision model (see torchvision.models.list_models())") from None
    default = getattr(enum, "DEFAULT", None)
    if tower.random_init or tower.weights_file:
        return None, default
    if tower.weights is None:
        return default, default
    try:
        return enum[tower.weights], default
    except KeyError:
        raise ConfigError(f"tv:{tower.name}:{tower.weights}: no such weights; choose one of "
                          f"{[w.name for w in enum]}, none, or a local file") from None


def preprocessing(modality: str, tower: TowerName, trust_remote_code: bool = False) -> ImagePreprocessing:
    if modality != "image":
        raise ConfigError(f"tv: towers are image towers, not {modality} (use hf: for {modality})")
    chosen, default = weights_enum(tower)
    meta = chosen or default
    if meta is None:
        return ImagePreprocessing(crop=224, resize=256, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    t = meta.transforms()
    return ImagePreprocessing(crop=int(t.crop_size[0]), resize=int(t.resize_size[0]), channels=3,
                              mean=tuple(t.mean), std=tuple(t.std), interpolation=t.interpolation.value)


def load_state(tower: TowerName, weights) -> dict:
    """The state dict of a local file or of a weights enum member (from the torch hub cache)."""
    if tower.weights_file:
        path = Path(tower.weights_file).expanduser()
        if not path.is_file():
            raise MissingFileError(f"tv:{tower.name}: weights file '{path}' does not exist")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("state_dict", state)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")
    if offline and not cached.is_file():
        raise MissingFileError(f"tv:{tower.name}: weights '{cached}' are not in the torch hub cache and "
                               f"HF_HUB_OFFLINE is set; download {weights.url} there, or use tv:{tower.name}:<file>")
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # URLError, hash mismatch, ...
        raise MissingFileError(f"tv:{tower.name}: cannot load weights '{cached}' ({type(err).__name__}: {err}); "
                               f"download {weights.url} there, or use tv:{tower.name}:<file>") from None


class TorchvisionTower(nn.Module):
    """A torchvision classifier without its last linear layer: images (B, 3, H, W) -> pooled (B, H)."""

    def __init__(self, tower: TowerName):
        super().__init__()
        import torchvision

        chosen, _ = weights_enum(tower)
        model = torchvision.models.get_model(tower.name, weights=None)
        if chosen is not None or tower.weights_file:
            model.load_state_dict(load_state(tower, chosen))
        self.dim = self._drop_last_linear(model, tower)
        self.model = model

    @staticmethod
    def _drop_last_linear(model: nn.Module, tower: TowerName) -> int:
        for attr in HEADS:
            head = getattr(model, attr, None)
            if isinstance(head, nn.Linear):
                setattr(model, attr, nn.Identity())
                return head.in_features
            if isinstance(head, nn.Sequential):
                for index in reversed(range(len(head))):
                    if isinstance(head[index], nn.Linear):
                        dim = head[index].in_features
                        head[index] = nn.Identity()
                        return dim
        raise ConfigError(f"tv:{tower.name}: no linear classifier ({'/'.join(HEADS)}) to remove")

    def blocks(self) -> list[nn.Module]:
        stages = [m for n, m in self.model.named_children() if n.startswith("layer")]  # ResNet family
        return stages or find_blocks(self.model)

    def enable_gradient_checkpointing(self) -> bool:
        return False  # the blocks are checkpointed generically (fusion.encoders.finetune.checkpoint_blocks)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor]:
        pooled = self.model(images).flatten(1)  # (B, H): the model's own pooling
        return pooled.unsqueeze(1), None, pooled  # tokens (B, 1, H)


def build(modality: str, tower: TowerName, pooling: str = "auto", trust_remote_code: bool = False) -> TorchvisionTower:
    if modality != "image":
        raise ConfigError(f"tv: towers are image towers, not {modality} (use hf: for {modality})")
    return TorchvisionTower(tower)
