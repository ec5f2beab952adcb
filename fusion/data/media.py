"""Loading of media files into tensors: images with PIL, audio with soundfile + torchaudio resampling."""

from __future__ import annotations

import io

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF
from PIL import Image, UnidentifiedImageError

from fusion.errors import ConfigError, UserError

MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 384_000


class MediaError(UserError, ValueError):
    """A media file could not be decoded; the message names the file."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{reason}: '{path}'")


def load_image(path: str, channels: int, data: bytes | None = None) -> Image.Image:
    """Decodes an image fully (so truncated files fail here) and converts it to L (1) or RGB (3) channels.

    `data`: the file's bytes when the caller has read them already (`path` then only names the file in errors).
    """
    if channels not in (1, 3):
        raise ConfigError(f"data.image_channels must be 1 or 3, got {channels}")
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as img:
            img.load()
            return img.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise MediaError(path, f"cannot decode image ({err})") from None
    except Exception as err:  # image plugins raise many other types (struct.error, IndexError, ...) on hostile files
        raise MediaError(path, f"cannot decode image ({type(err).__name__}: {err})") from None


def load_audio(path: str, sample_rate: int, data: bytes | None = None) -> torch.Tensor:
    """Reads an audio file as mono float32 resampled to `sample_rate`.

    `data`: the file's bytes when the caller has read them already (`path` then only names the file in errors).

    Returns:
        (L,) waveform.
    """
    try:
        data, rate = soundfile.read(path if data is None else io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, OSError, ValueError) as err:
        raise MediaError(path, f"cannot decode audio ({err})") from None
    except Exception as err:
        raise MediaError(path, f"cannot decode audio ({type(err).__name__}: {err})") from None
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:  # resampling from an absurd rate would exhaust memory
        raise MediaError(path, f"implausible sample rate {rate} Hz (expected {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE})")
    if data.shape[0] == 0:
        raise MediaError(path, "audio has no samples")
    if not np.isfinite(data).all():
        raise MediaError(path, "audio contains NaN or infinite samples")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))  # (L,)
    if rate != sample_rate:
        wave = AF.resample(wave, orig_freq=int(rate), new_freq=int(sample_rate))
    return wave


def crop_length(wave: torch.Tensor, length: int) -> torch.Tensor:
    """Centre-crops a (L,) waveform to at most `length` samples (shorter ones stay as they are)."""
    if wave.numel() <= length:
        return wave
    start = (wave.numel() - length) // 2
    return wave[start : start + length]


def fit_length(wave: torch.Tensor, length: int) -> torch.Tensor:
    """Centre-crops or right-pads a (L,) waveform to exactly `length` samples."""
    if wave.numel() >= length:
        start = (wave.numel() - length) // 2
        return wave[start : start + length]
    return torch.nn.functional.pad(wave, (0, length - wave.numel()))
