"""Image encoder: a small built-in CNN or any torchvision backbone chosen by name."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
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


class ImageAugment(nn.Module):
    """Training-time augmentation of (B, C, H, W) images, drawn per sample: a random affine map with rotation in
    +-`rotate` degrees, scale in 1 +- `scale` and a shift of up to `shift` of the side in x and y. Pixels pulled in
    from outside repeat the border (the background of a centred object)."""

    def __init__(self, rotate: float = 10.0, scale: float = 0.1, shift: float = 0.1):
        super().__init__()
        if min(rotate, scale, shift) < 0 or scale >= 1:
            raise ConfigError(f"encoders.image.augment_args: need rotate, shift >= 0 and 0 <= scale < 1, "
                              f"got rotate={rotate}, scale={scale}, shift={shift}")
        self.rotate, self.scale, self.shift = rotate, scale, shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, dev = images.shape[0], images.device
        uniform = lambda: torch.rand(b, device=dev) * 2 - 1  # noqa: E731  (B,) in [-1, 1]
        angle = uniform() * math.radians(self.rotate)
        zoom = 1 + uniform() * self.scale
        return affine(images, angle, zoom, uniform() * self.shift, uniform() * self.shift)


def affine(images: torch.Tensor, angle: torch.Tensor, zoom: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Rotates (radians; positive turns clockwise on screen), zooms and shifts (share of the side; +x right,
    +y down) every image of (B, C, H, W) about its centre by its own (B,) values; returns (B, C, H, W)."""
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom  # output -> input coordinates: inverse map
    theta = torch.stack([torch.stack([cos, sin, -2 * (cos * dx + sin * dy)], 1),
                         torch.stack([-sin, cos, -2 * (-sin * dx + cos * dy)], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


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
        augment: apply ImageAugment in training mode.
        augment_args: keyword arguments of ImageAugment (e.g. {"rotate": 15}); defaults when None.
    """

    def __init__(self, backbone: str = "cnn", in_channels: int = 1, out_dim: int = 128, width: int = 16,
                 weights_path: str | None = None, freeze: bool = False, image_size: int = 32,
                 augment: bool = False, augment_args: dict | None = None):
        super().__init__()
        self.augment = ImageAugment(**(augment_args or {})) if augment else None
        if backbone == "cnn":
            self.trunk = SmallConvNet(in_channels, width)
            channels = self.trunk.out_channels
        else:
            self.trunk, channels = torchvision_trunk(backbone, in_channels, weights_path)
        if freeze:
            self.trunk.requires_grad_(False)
        self.proj = nn.Linear(channels, out_dim)
        self.out_dim = out_dim

    @classmethod
    def preprocessing(cls, in_channels: int = 1, image_size: int = 32, **_options) -> ImagePreprocessing:
        """Images resized to image_size x image_size, in_channels channels, scaled to [-1, 1]."""
        return ImagePreprocessing(crop=int(image_size), channels=int(in_channels), mean=(0.5,) * int(in_channels),
                                  std=(0.5,) * int(in_channels))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> trunk feature map (B, C', H', W'), augmented first in training mode."""
        if self.training and self.augment is not None:
            images = self.augment(images)
        return self.trunk(images)

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.feature_map(images).flatten(2).transpose(1, 2))  # (B, H'W', D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.feature_map(images).mean(dim=(2, 3)))  # (B, D)
