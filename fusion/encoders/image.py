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
    """

    def __init__(self, backbone: str = "cnn", in_channels: int = 1, out_dim: int = 128, width: int = 16,
                 weights_path: str | None = None, freeze: bool = False, image_size: int = 32):
        super().__init__()
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

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self.trunk(images)  # (B, C, H', W')
        return self.proj(fmap.flatten(2).transpose(1, 2))  # (B, H'W', D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self.trunk(images)  # (B, C, H', W')
        return self.proj(fmap.mean(dim=(2, 3)))  # (B, D)
