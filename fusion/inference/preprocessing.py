"""What a classifier expects as input: image size and normalisation, audio rate and length, text tokenizer.

Taken from a run's `config.yaml` (data and encoder sections) and stored in an export's `config.json`, so an
exported model preprocesses new data exactly as the run's test split was preprocessed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from torchvision import transforms

from fusion.data.tokenizer import build_tokenizer


@dataclass
class Preprocessing:
    """Input settings of a trained classifier (the evaluation path: no augmentation)."""

    modalities: list[str]  # the modalities the model was trained on (sorted)
    image_size: int = 32  # images are resized to image_size x image_size
    image_channels: int = 1  # 1 grayscale, 3 RGB
    image_mean: list[float] = field(default_factory=lambda: [0.5])  # per channel, after scaling to [0, 1]
    image_std: list[float] = field(default_factory=lambda: [0.5])
    sample_rate: int = 8000  # audio is resampled to this rate
    audio_samples: int = 8000  # ... and centre-cropped or zero-padded to this many samples
    mel: dict = field(default_factory=dict)  # the audio tower's log-mel settings (computed inside the model)
    text_model: str | None = None  # local transformers tokenizer folder; None = the built-in byte tokenizer
    max_text_length: int = 40  # tokens per text (padded / truncated)

    def __post_init__(self) -> None:
        if self.image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 or 3, got {self.image_channels}")
        if len(self.image_mean) != self.image_channels or len(self.image_std) != self.image_channels:
            raise ValueError("image_mean and image_std need one value per image channel")

    @classmethod
    def from_run_config(cls, config: dict, modalities: list[str]) -> Preprocessing:
        """From a run's resolved config.yaml (`data` and `model.encoders` sections)."""
        data = config["data"]
        channels = int(data.get("image_channels", 1))
        audio = (config["model"].get("encoders") or {}).get("audio") or {}
        rate = int(data.get("sample_rate", 8000))
        return cls(modalities=sorted(modalities), image_size=int(data.get("image_size", 32)), image_channels=channels,
                   image_mean=[0.5] * channels, image_std=[0.5] * channels,  # as ManifestDataModule normalises
                   sample_rate=rate, audio_samples=int(round(float(data.get("audio_seconds", 1.0)) * rate)),
                   mel={"n_mels": int(audio.get("n_mels", 40)), "win_ms": 25.0, "hop_ms": 10.0} if audio else {},
                   text_model=data.get("text_model"), max_text_length=int(data.get("max_text_length", 40)))

    def to_dict(self) -> dict:
        return asdict(self)

    def image_transform(self) -> Callable:
        """PIL image -> (C, H, W) float tensor."""
        return transforms.Compose([transforms.Resize((self.image_size, self.image_size)), transforms.ToTensor(),
                                   transforms.Normalize(self.image_mean, self.image_std)])

    def tokenizer(self) -> Callable:
        return build_tokenizer(self.text_model)
