"""Talking-face video loading: PyAV decoding, audio resampling, a fixed lower-face crop, frame-rate audio features.

PyAV ships its own FFmpeg libraries, so MPEG-1/2, MP4 and AVI files decode without a system FFmpeg. The mouth
region is a fixed box given as fractions of the frame (top, left, height, width): suitable for frontal,
head-centred video such as GRID, where the default box covers nose tip to chin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

from fusion.errors import ConfigError, MissingFileError

# GRID (360x288, frontal): rows 170-250, columns 120-216 contain the lips and chin.
DEFAULT_MOUTH_BOX = (0.59, 0.333, 0.28, 0.267)


@dataclass
class DecodedVideo:
    """Frames and audio of one file.

    Attributes:
        frames: uint8 tensor (T, H, W), grayscale.
        fps: video frame rate.
        audio: float tensor (C, L) in [-1, 1].
        sample_rate: audio sample rate.
    """

    frames: torch.Tensor
    fps: float
    audio: torch.Tensor
    sample_rate: int


def read_video(path: str | Path) -> DecodedVideo:
    """Decodes every video frame (grayscale) and the first audio stream of a file.

    The audio is aligned to the first video frame using the streams' timestamps.

    Raises:
        FileNotFoundError / ValueError: naming the file, if it is missing, unreadable, or lacks a stream.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"video file '{path}' does not exist")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ConfigError(f"video file '{path}' has no video stream")
            if not container.streams.audio:
                raise ConfigError(f"video file '{path}' has no audio stream")
            video_stream = container.streams.video[0]
            rate = video_stream.average_rate or video_stream.guessed_rate
            if not rate:
                raise ConfigError(f"video file '{path}': cannot determine the frame rate")
            frames, video_start = [], None
            for frame in container.decode(video=0):
                if video_start is None and frame.time is not None:
                    video_start = frame.time
                frames.append(frame.to_ndarray(format="gray"))
        with av.open(str(path)) as container:
            audio_stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", layout=audio_stream.layout.name, rate=audio_stream.rate)
            chunks, audio_start = [], None
            for frame in container.decode(audio=0):
                if audio_start is None and frame.time is not None:
                    audio_start = frame.time
                for converted in resampler.resample(frame):
                    chunks.append(converted.to_ndarray())
            for converted in resampler.resample(None):
                chunks.append(converted.to_ndarray())
            sample_rate = int(audio_stream.rate)
    except av.error.FFmpegError as err:
        raise ConfigError(f"video file '{path}' cannot be decoded: {err}") from None
    if not frames:
        raise ConfigError(f"video file '{path}' has no decodable video frames")
    if not chunks:
        raise ConfigError(f"video file '{path}' has no decodable audio")
    audio = torch.from_numpy(np.concatenate(chunks, axis=1).astype(np.float32))  # (C, L)
    # Put the audio on the video's clock: a stream that starts later is padded with silence, earlier is cut.
    lead = round(((audio_start or 0.0) - (video_start or 0.0)) * sample_rate)
    if lead > 0:
        audio = torch.cat([torch.zeros(audio.shape[0], lead), audio], 1)
    elif lead < 0:
        audio = audio[:, -lead:]
    return DecodedVideo(torch.from_numpy(np.stack(frames)), float(rate), audio, sample_rate)


def to_mono(audio: torch.Tensor, orig_rate: int, target_rate: int) -> torch.Tensor:
    """Averages channels and resamples (band-limited sinc) to ``target_rate``: (C, L) -> (L',)."""
    mono = audio.mean(0)  # (L,)
    if orig_rate != target_rate:
        mono = torchaudio.functional.resample(mono, orig_rate, target_rate)
    return mono


def crop_mouth(frames: torch.Tensor, box: tuple[float, float, float, float] = DEFAULT_MOUTH_BOX,
               size: tuple[int, int] = (32, 32)) -> torch.Tensor:
    """Cuts a fixed lower-face box and resizes it (area averaging).

    Args:
        frames: uint8 (T, H, W).
        box: (top, left, height, width) as fractions of the frame height/width.
        size: output (height, width).

    Returns:
        uint8 (T, size[0], size[1]).
    """
    top, left, height, width = box
    if not (0 <= top < 1 and 0 <= left < 1 and 0 < height <= 1 - top + 1e-9 and 0 < width <= 1 - left + 1e-9):
        raise ValueError(f"mouth box {box} must be fractions (top, left, height, width) inside the frame")
    frame_h, frame_w = frames.shape[-2:]
    y0, x0 = round(top * frame_h), round(left * frame_w)
    y1, x1 = max(y0 + 1, round((top + height) * frame_h)), max(x0 + 1, round((left + width) * frame_w))
    region = frames[:, y0:y1, x0:x1].float()[:, None]  # (T, 1, h, w)
    resized = F.interpolate(region, size=size, mode="area")  # (T, 1, H', W')
    return resized[:, 0].round().clamp(0, 255).to(torch.uint8)


def log_mel_frames(waveform: torch.Tensor, sample_rate: int, fps: float, num_frames: int, n_mels: int = 40,
                   subframes: int = 4) -> torch.Tensor:
    """Log-mel features at ``subframes`` steps per video frame, trimmed/padded to the video length.

    Args:
        waveform: (L,) mono audio.
        sample_rate: its rate.
        fps: video frame rate.
        num_frames: number of video frames T.
        n_mels: mel bands.
        subframes: feature steps per video frame (hop = sample_rate / (fps * subframes)).

    Returns:
        float (T * subframes, n_mels); step i is centred on time i / (fps * subframes).
    """
    hop = sample_rate / (fps * subframes)
    if abs(hop - round(hop)) > 1e-6:
        raise ValueError(f"sample_rate {sample_rate} is not a multiple of fps*subframes = {fps * subframes}")
    hop = int(round(hop))
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=4 * hop, win_length=2 * hop,
                                               hop_length=hop, n_mels=n_mels, center=True)(waveform)  # (M, N)
    feats = torch.log(mel + 1e-6).t()  # (N, M)
    steps = num_frames * subframes
    if feats.shape[0] < steps:
        feats = torch.cat([feats, feats[-1:].expand(steps - feats.shape[0], -1)], 0)
    return feats[:steps].contiguous()


def load_sync_clip(path: str | Path, sample_rate: int = 16000, n_mels: int = 40, subframes: int = 4,
                   box: tuple[float, float, float, float] = DEFAULT_MOUTH_BOX,
                   crop_size: tuple[int, int] = (32, 32)) -> dict[str, torch.Tensor | float]:
    """Decodes a talking-face file into the sync model's inputs.

    Returns:
        {"mouth": uint8 (T, h, w), "audio": float (T * subframes, n_mels), "fps": float}.
    """
    decoded = read_video(path)
    mono = to_mono(decoded.audio, decoded.sample_rate, sample_rate)
    num_frames = decoded.frames.shape[0]
    return {
        "mouth": crop_mouth(decoded.frames, box, crop_size),
        "audio": log_mel_frames(mono, sample_rate, decoded.fps, num_frames, n_mels, subframes),
        "fps": decoded.fps,
    }
