"""Image encoder: a small built-in CNN or any torchvision backbone chosen by name."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fusion.encoders.preprocessing import ImagePreprocessing
from fusion.errors import ConfigError, MissingFileError


class SmallConvNet(nn.Module):
    """Three conv blocks (conv-BN-ReLU, pool) of width w, 2w, 4w; about 2.5 M multiply-adds at 32x32, w=16.

    Input (B, C, H, W) -> feature map (B, width*4, H/8, W/8).
    """

    def __init__(self, in_channels: int = 1, width: int = 16):
        super().__init__()
        layers, channels = [], in_channels
        for out in (width, width * 2, width * 4):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            channels = out
        self.body = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def torchvision_trunk(name: str, in_channels: int, weights_path: str | None) -> tuple[nn.Module, int]:
    """A torchvision classification model without its pooling/classifier, producing a feature map."""
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None)
    except ValueError:
        raise ConfigError(f"encoders.image.backbone: unknown torchvision model '{name}'") from None
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise MissingFileError(f"encoders.image.weights_path: '{path}' does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    if hasattr(model, "features"):  # VGG, MobileNet, EfficientNet, ConvNeXt, DenseNet
        trunk = model.features
    else:  # ResNet / RegNet style
        trunk = nn.Sequential(*[m for n, m in model.named_children() if n not in ("avgpool", "fc", "classifier")])
    with torch.no_grad():
        trunk.eval()
        channels = trunk(torch.zeros(1, 3, 64, 64)).shape[1]
    trunk.train()
    if in_channels != 3:
        trunk = nn.Sequential(ChannelAdapter(in_channels), trunk)
    return trunk, channels


class ChannelAdapter(nn.Module):
    """Repeats (or averages) channels so a 3-channel backbone accepts `in_channels` inputs."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            return x.expand(-1, 3, -1, -1)
        return x.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)


class ImageEncoder(nn.Module):
    """Images (B, C, H, W) -> pooled features (B, out_dim); `forward_tokens` gives (B, H'W', out_dim).

    Args:
        backbone: "cnn" (built-in SmallConvNet) or a torchvision model name ("resnet18", "mobilenet_v3_small", ...).
        in_channels: input channels (1 grayscale, 3 RGB).
        out_dim: feature size after the projection.
        width: base width of the built-in CNN.
        weights_path: optional local file with the torchvision backbone's state dict (never downloaded).
        freeze: keep the backbone's weights fixed.
        image_size: side of the square images the data module makes for this tower (resized, 0.5/0.5 normalised).
        pool: "mean" averages the feature map over its positions (a token per position for cross-attention);
            "flatten" projects the whole (C, H', W') map at image_size, so where a stroke lies counts (the
            recipes' default for the built-in CNN: more accurate, above all on occluded or noisy images;
            benchmarks/robustness/README.md).
    """

    def __init__(self, backbone: str = "cnn", in_channels: int = 1, out_dim: int = 128, width: int = 16,
                 weights_path: str | None = None, freeze: bool = False, image_size: int = 32, pool: str = "mean"):
        super().__init__()
        if pool not in ("mean", "flatten"):
            raise ConfigError(f"encoders.image.pool must be 'mean' or 'flatten', got '{pool}'")
        self.pool = pool
        if backbone == "cnn":
            self.trunk = SmallConvNet(in_channels, width)
            channels = self.trunk.out_channels
        else:
            self.trunk, channels = torchvision_trunk(backbone, in_channels, weights_path)
        if freeze:
            self.trunk.requires_grad_(False)
        positions = self._map_positions(in_channels, image_size) if pool == "flatten" else 1
        self.proj = nn.Linear(channels * positions, out_dim)
        self.out_dim = out_dim

    @property
    def gives_tokens(self) -> bool:
        """Whether `forward_tokens` works: cross-attention fusion needs the per-position map (pool=mean)."""
        return self.pool == "mean"

    def _map_positions(self, in_channels: int, image_size: int) -> int:
        """H' x W' of the trunk's map for image_size x image_size inputs (one dry run)."""
        training = self.trunk.training
        with torch.no_grad():
            fmap = self.trunk.eval()(torch.zeros(1, in_channels, image_size, image_size))
        self.trunk.train(training)
        return fmap.shape[-2] * fmap.shape[-1]

    @classmethod
    def preprocessing(cls, in_channels: int = 1, image_size: int = 32, **_options) -> ImagePreprocessing:
        """Images resized to image_size x image_size, in_channels channels, scaled to [-1, 1]."""
        return ImagePreprocessing(crop=int(image_size), channels=int(in_channels), mean=(0.5,) * int(in_channels),
                                  std=(0.5,) * int(in_channels))

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        if not self.gives_tokens:
            raise ConfigError("the image tower with encoders.image.pool=flatten gives one vector per image; "
                              "cross-attention fusion needs its tokens (model.encoders.image.pool=mean)")
        fmap = self.trunk(images)  # (B, C, H', W')
        return self.proj(fmap.flatten(2).transpose(1, 2))  # (B, H'W', D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self.trunk(images)  # (B, C, H', W')
        if self.pool == "flatten":
            return self.proj(fmap.flatten(1))  # (B, C*H'*W') -> (B, D)
        return self.proj(fmap.mean(dim=(2, 3)))  # (B, D)
