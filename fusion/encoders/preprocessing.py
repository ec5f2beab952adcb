"""What a tower expects as input, so the data module can prepare it: image size and normalisation, audio rate
and features, text tokenizer.

Every encoder class may offer a classmethod ``preprocessing(**config)`` that answers from its config alone
(reading a processor's files, never building the network); ``fusion.encoders.towers.encoder_preprocessing``
asks it. The built-in towers answer 32 px grayscale at 0.5/0.5, 8 kHz audio of 1 s and the byte tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fusion.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImagePreprocessing:
    """PIL image -> (channels, crop, crop) tensor: resize, centre crop, scale to [0, 1], normalise."""

    crop: int = 32  # side of the square input the tower sees
    resize: int | None = None  # resize the shorter side to this before the crop; None = straight to crop x crop
    channels: int = 1  # 1 grayscale, 3 RGB
    mean: tuple[float, ...] = (0.5,)  # per channel, after scaling to [0, 1]
    std: tuple[float, ...] = (0.5,)
    interpolation: str = "bilinear"  # nearest | bilinear | bicubic

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"image towers take 1 or 3 channels, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(f"image mean {self.mean} and std {self.std} need one value per channel ({self.channels})")
        if self.interpolation not in ("nearest", "bilinear", "bicubic"):
            raise ConfigError(f"image interpolation must be nearest, bilinear or bicubic, got '{self.interpolation}'")

    def with_size(self, size: int) -> ImagePreprocessing:
        """The same normalisation at another input side (resize keeps its ratio to the crop)."""
        resize = None if self.resize is None else round(self.resize * size / self.crop)
        return ImagePreprocessing(size, resize, self.channels, self.mean, self.std, self.interpolation)


@dataclass(frozen=True)
class AudioPreprocessing:
    """Waveform -> what the tower takes: a fixed-length (B, L) tensor, or with ``variable_length`` a dict of the
    feature extractor's outputs (``input_values`` or ``input_features``) and a sample-level ``attention_mask``."""

    sample_rate: int = 8000  # audio is resampled to this rate
    seconds: float = 1.0  # fixed length (centre crop / zero pad); with variable_length: the longest kept
    variable_length: bool = False  # pad each batch to its longest clip and pass an attention mask
    feature_extractor: str | None = None  # transformers feature extractor (folder or hub id) applied per batch
    padding: str = "longest"  # how the feature extractor pads: longest | max_length (Whisper) | repeatpad (CLAP)
    extra: dict = field(default_factory=dict)  # keyword arguments of from_pretrained (local_files_only, ...)

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.seconds <= 0:
            raise ConfigError(f"audio towers need a positive sample rate and length, got {self.sample_rate} Hz, "
                              f"{self.seconds} s")


@dataclass(frozen=True)
class TextPreprocessing:
    """Strings -> {"input_ids", "attention_mask"}: the built-in byte tokenizer or a transformers tokenizer."""

    tokenizer: str | None = None  # transformers tokenizer (folder or hub id); None = built-in byte tokenizer
    max_length: int | None = None  # tokens per text; None = the data module's max_text_length
    extra: dict = field(default_factory=dict)  # keyword arguments of from_pretrained (local_files_only, ...)


Preprocessing = ImagePreprocessing | AudioPreprocessing | TextPreprocessing
