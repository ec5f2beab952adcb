"""What a classifier expects as input: image size and normalisation, audio rate and length, text tokenizer.

Taken from a run's `config.yaml` (data and encoder sections) and stored in an export's `config.json`, so an
exported model preprocesses new data exactly as the run's test split was preprocessed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from torchvision import transforms

from fusion.data.tokenizer import build_tokenizer
from fusion.errors import ConfigError


@dataclass
class Preprocessing:
    """Input settings of a trained classifier (the evaluation path: no augmentation)."""

    modalities: list[str]  # the modalities the model was trained on (sorted)
    image_size: int = 32  # images are resized to image_size x image_size
    image_channels: int = 1  # 1 grayscale, 3 RGB
    image_mean: list[float] = field(default_factory=lambda: [0.5])  # per channel, after scaling to [0, 1]
    image_std: list[float] = field(default_factory=lambda: [0.5])
    image_resize: int | None = None  # shorter side resized to this, then the centre crop; None: straight to size
    image_interpolation: str = "bilinear"
    sample_rate: int = 8000  # audio is resampled to this rate
    audio_samples: int = 8000  # ... and centre-cropped or zero-padded to this many samples
    mel: dict = field(default_factory=dict)  # the audio tower's log-mel settings (computed inside the model)
    text_model: str | None = None  # local transformers tokenizer folder; None = the built-in byte tokenizer
    text_options: dict = field(default_factory=dict)  # keyword arguments of the tokenizer's from_pretrained
    max_text_length: int = 40  # tokens per text (padded / truncated)

    def __post_init__(self) -> None:
        if self.image_channels not in (1, 3):
            raise ConfigError(f"image_channels must be 1 or 3, got {self.image_channels}")
        if len(self.image_mean) != self.image_channels or len(self.image_std) != self.image_channels:
            raise ConfigError("image_mean and image_std need one value per image channel")

    @classmethod
    def from_run_config(cls, config: dict, modalities: list[str]) -> Preprocessing:
        """What the run's data module fed its towers (asked from the run's resolved config.yaml).

        Raises:
            ConfigError: for towers with variable-length audio (pretrained audio towers), not supported here yet.
        """
        from hydra.utils import get_class

        data = dict(config["data"])
        datamodule = get_class(data.pop("_target_"))(**{k: v for k, v in data.items() if not k.startswith("_")})
        datamodule.resolve_preprocessing(set(modalities))
        image, audio, text = datamodule.image_prep, datamodule.audio_prep, datamodule.text_prep
        if "audio" in modalities and audio.variable_length:
            raise ConfigError("predict/export support fixed-length audio towers only (the built-in one); this run's "
                              "audio tower takes variable-length audio")
        audio_config = (config["model"].get("encoders") or {}).get("audio")
        mel = {}
        if isinstance(audio_config, dict) and "n_mels" in audio_config:
            mel = {"n_mels": int(audio_config["n_mels"]), "win_ms": 25.0, "hop_ms": 10.0}
        return cls(modalities=sorted(modalities), image_size=image.crop, image_channels=image.channels,
                   image_mean=list(image.mean), image_std=list(image.std), image_resize=image.resize,
                   image_interpolation=image.interpolation, sample_rate=audio.sample_rate,
                   audio_samples=int(round(datamodule.audio_seconds * audio.sample_rate)), mel=mel,
                   text_model=text.tokenizer, text_options=dict(text.extra),
                   max_text_length=int(text.max_length or data.get("max_text_length", 40)))

    def to_dict(self) -> dict:
        return asdict(self)

    def image_transform(self) -> Callable:
        """PIL image -> (C, H, W) float tensor."""
        mode = transforms.InterpolationMode(self.image_interpolation)
        if self.image_resize is None:
            steps = [transforms.Resize((self.image_size, self.image_size), interpolation=mode)]
        else:
            steps = [transforms.Resize(self.image_resize, interpolation=mode), transforms.CenterCrop(self.image_size)]
        return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(self.image_mean, self.image_std)])

    def tokenizer(self) -> Callable:
        return build_tokenizer(self.text_model, **self.text_options)
