"""One media file -> its decoded, deterministically preprocessed value, through the optional disk cache.

Runs in DataLoader workers (and in validation workers with `data.validate=decode`), so it holds only picklable
settings. What is cached is what does not change between epochs: images after the resize (and centre crop),
as uint8 (H, W, C); audio resampled and cut to length, as float32 (L,); video frames resized and cut to
`video_frames`, as uint8 (T, H, W). Random augmentation and normalisation run after the cache, every time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fusion.data.disk_cache import DiskCache
from fusion.data.media import MediaError, crop_length, fit_length, load_audio, load_image

CACHE_FORMAT = 1  # bump when what is stored for the same settings changes


@dataclass
class MediaDecoder:
    """Decodes files of one dataset.

    Attributes:
        image_channels: 1 (grayscale) or 3 (RGB).
        sample_rate: audio is resampled to this rate.
        audio_samples: audio is centre-cropped (and with pad_audio padded) to this many samples.
        pad_audio: pad audio to audio_samples (False: variable length, only cropped).
        image_resize: deterministic PIL -> PIL step before the cache (e.g. Resize + CenterCrop); None = none.
        image_resize_key: describes image_resize in cache keys (size, crop, interpolation).
        video_size: video frames are resized to video_size x video_size.
        video_frames: video is centre-cropped or zero-padded to this many frames.
        cache: where decoded values are kept between epochs and runs; None = decode every time.
    """

    image_channels: int
    sample_rate: int
    audio_samples: int
    pad_audio: bool = True
    image_resize: Callable | None = None
    image_resize_key: str = "none"
    video_size: int = 32
    video_frames: int = 75
    cache: DiskCache | None = None

    def settings(self, modality: str) -> str:
        """The preprocessing settings that a cached value of `modality` depends on."""
        if modality == "image":
            return f"v{CACHE_FORMAT}/image/channels={self.image_channels}/{self.image_resize_key}"
        if modality == "audio":
            return f"v{CACHE_FORMAT}/audio/rate={self.sample_rate}/samples={self.audio_samples}/pad={self.pad_audio}"
        if modality == "video":
            return f"v{CACHE_FORMAT}/video/size={self.video_size}/frames={self.video_frames}"
        raise ValueError(f"modality '{modality}' has no files to decode")

    def load(self, path: str, modality: str) -> Image.Image | torch.Tensor:
        """The value of one file: PIL image, (L,) float waveform or (T, H, W) uint8 frames.

        Raises:
            MediaError: naming the file, if it cannot be read or decoded.
        """
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as err:
            raise MediaError(path, f"cannot read file ({err.strerror})") from None
        if self.cache is None:
            return self.from_array(self.decode(path, modality, data), modality)
        key = DiskCache.key(data, self.settings(modality))
        array = self.cache.get(key)
        if array is None:
            array = self.decode(path, modality, data)
            self.cache.put(key, array)
        return self.from_array(array, modality)

    def decode(self, path: str, modality: str, data: bytes) -> np.ndarray:
        """Decodes and preprocesses the bytes of one file into the array that is cached."""
        if modality == "image":
            image = load_image(path, self.image_channels, data)
            if self.image_resize is not None:
                image = self.image_resize(image)
            return np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, -1)  # (H, W, C)
        if modality == "audio":
            wave = load_audio(path, self.sample_rate, data)
            wave = fit_length(wave, self.audio_samples) if self.pad_audio else crop_length(wave, self.audio_samples)
            return wave.numpy().astype(np.float32, copy=False)  # (L,)
        if modality == "video":
            return self.decode_video(path)
        raise ValueError(f"modality '{modality}' has no files to decode")

    def decode_video(self, path: str) -> np.ndarray:
        from fusion.data.video_io import read_video  # PyAV, loaded only for video

        try:
            frames = read_video(path).frames  # (T, H, W) uint8
        except Exception as err:  # decoding errors of any kind name the file
            raise MediaError(path, f"cannot decode video ({type(err).__name__}: {err})") from None
        if frames.shape[0] == 0:
            raise MediaError(path, "video has no frames")
        start = max(0, (frames.shape[0] - self.video_frames) // 2)
        frames = frames[start : start + self.video_frames].float()[:, None]  # (T', 1, H, W)
        frames = F.interpolate(frames, size=(self.video_size, self.video_size), mode="bilinear", antialias=True,
                               align_corners=False)[:, 0]  # (T', h, w)
        frames = F.pad(frames, (0, 0, 0, 0, 0, self.video_frames - frames.shape[0]))  # (T, h, w)
        return frames.round().clamp(0, 255).to(torch.uint8).numpy()

    def from_array(self, array: np.ndarray, modality: str) -> Image.Image | torch.Tensor:
        """Cached array -> the value the dataset transforms: PIL image, or a tensor (copied out of the map)."""
        if modality == "image":
            pixels = np.asarray(array)
            return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)  # uint8: L or RGB
        return torch.from_numpy(np.array(array))
