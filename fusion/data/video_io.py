"""Talking-face video loading: PyAV decoding, audio resampling, mouth crops (tracked or a fixed box), audio features.

PyAV ships its own FFmpeg libraries, so MPEG-1/2, MP4 and AVI files decode without a system FFmpeg. The mouth
region follows a tracked face (``mouth="track"``, :mod:`fusion.data.face_track`) or is a fixed box given as
fractions of the frame (top, left, height, width; ``mouth="box"``): suitable for pre-cropped or frontal,
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

from fusion.data.face_track import FaceTracker, TrackerConfig, crop_box, mouth_boxes
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


def _open(path: Path):
    if not path.is_file():
        raise MissingFileError(f"video file '{path}' does not exist")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as err:
        raise ConfigError(f"video file '{path}' cannot be decoded: {err}") from None


def iter_gray_frames(path: str | Path):
    """Streams the grayscale frames of a file: yields (frame (H, W) uint8, time in s or None), decoded one by one.

    Raises:
        FileNotFoundError / ValueError: naming the file, if it is missing, unreadable, or has no video stream.
    """
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise ConfigError(f"video file '{path}' has no video stream")
        try:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="gray"), frame.time
        except av.error.FFmpegError as err:
            raise ConfigError(f"video file '{path}' cannot be decoded: {err}") from None


def video_rate(path: str | Path) -> float:
    """Frame rate of the first video stream."""
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise ConfigError(f"video file '{path}' has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise ConfigError(f"video file '{path}': cannot determine the frame rate")
    return float(rate)


def read_audio(path: str | Path, video_start: float | None) -> tuple[torch.Tensor, int]:
    """The first audio stream as float (C, L) in [-1, 1] on the video's clock (starting at ``video_start`` s).

    A stream that starts later than the video is padded with silence, one that starts earlier is cut.
    """
    path = Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise ConfigError(f"video file '{path}' has no audio stream")
        audio_stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout=audio_stream.layout.name, rate=audio_stream.rate)
        chunks, audio_start = [], None
        try:
            for frame in container.decode(audio=0):
                if audio_start is None and frame.time is not None:
                    audio_start = frame.time
                for converted in resampler.resample(frame):
                    chunks.append(converted.to_ndarray())
            for converted in resampler.resample(None):
                chunks.append(converted.to_ndarray())
        except av.error.FFmpegError as err:
            raise ConfigError(f"video file '{path}' cannot be decoded: {err}") from None
        sample_rate = int(audio_stream.rate)
    if not chunks:
        raise ConfigError(f"video file '{path}' has no decodable audio")
    audio = torch.from_numpy(np.concatenate(chunks, axis=1).astype(np.float32))  # (C, L)
    lead = round(((audio_start or 0.0) - (video_start or 0.0)) * sample_rate)
    if lead > 0:
        audio = torch.cat([torch.zeros(audio.shape[0], lead), audio], 1)
    elif lead < 0:
        audio = audio[:, -lead:]
    return audio, sample_rate


def read_video(path: str | Path) -> DecodedVideo:
    """Decodes every video frame (grayscale) and the first audio stream of a file.

    The audio is aligned to the first video frame using the streams' timestamps.

    Raises:
        FileNotFoundError / ValueError: naming the file, if it is missing, unreadable, or lacks a stream.
    """
    path = Path(path)
    rate = video_rate(path)
    frames, video_start = [], None
    for frame, time in iter_gray_frames(path):
        if video_start is None and time is not None:
            video_start = time
        frames.append(frame)
    if not frames:
        raise ConfigError(f"video file '{path}' has no decodable video frames")
    audio, sample_rate = read_audio(path, video_start)
    return DecodedVideo(torch.from_numpy(np.stack(frames)), rate, audio, sample_rate)


def to_mono(audio: torch.Tensor, orig_rate: int, target_rate: int) -> torch.Tensor:
    """Averages channels and resamples (band-limited sinc) to ``target_rate``: (C, L) -> (L',)."""
    mono = audio.mean(0)  # (L,)
    if orig_rate != target_rate:
        mono = torchaudio.functional.resample(mono, orig_rate, target_rate)
    return mono


def box_pixels(box: tuple[float, float, float, float], frame_h: int, frame_w: int) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) pixels of a (top, left, height, width) fractional box."""
    top, left, height, width = box
    if not (0 <= top < 1 and 0 <= left < 1 and 0 < height <= 1 - top + 1e-9 and 0 < width <= 1 - left + 1e-9):
        raise ValueError(f"mouth box {box} must be fractions (top, left, height, width) inside the frame")
    y0, x0 = round(top * frame_h), round(left * frame_w)
    return y0, x0, max(y0 + 1, round((top + height) * frame_h)), max(x0 + 1, round((left + width) * frame_w))


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
    y0, x0, y1, x1 = box_pixels(box, frames.shape[-2], frames.shape[-1])
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


def resample_indices(num_frames: int, fps: float, target_fps: float) -> torch.Tensor:
    """Source frame shown at each frame of a ``target_fps`` grid (nearest in time): (T',) LongTensor."""
    count = max(1, int(num_frames * target_fps / fps + 1e-6))
    times = torch.arange(count, dtype=torch.float64) / target_fps
    return torch.round(times * fps).long().clamp(max=num_frames - 1)


MOUTH_MODES = ("track", "box")


def load_sync_clip(path: str | Path, sample_rate: int = 16000, n_mels: int = 40, subframes: int = 4,
                   box: tuple[float, float, float, float] = DEFAULT_MOUTH_BOX,
                   crop_size: tuple[int, int] = (32, 32), mouth: str = "box", tracker: TrackerConfig | None = None,
                   fps: float | None = None) -> dict:
    """Decodes a talking-face file into the sync model's inputs, streaming its frames.

    Args:
        mouth: "track" (face detector + tracker, :mod:`fusion.data.face_track`; two decoding passes) or "box"
            (the fixed fractional ``box``, for pre-cropped or GRID-framed video).
        tracker: tracker settings (mouth=track).
        fps: frame rate to put the clip on (nearest source frame per target frame; None = the file's rate).

    Returns:
        {"mouth": uint8 (T, h, w), "audio": float (T * subframes, n_mels), "fps": float, "source_fps": float,
        "face": float (T,) face confidence (ones for mouth=box)}.

    Raises:
        NoFaceError: mouth=track and no face in any checked frame (names the file).
    """
    if mouth not in MOUTH_MODES:
        raise ConfigError(f"data.mouth must be one of {MOUTH_MODES}, got {mouth!r}")
    path = Path(path)
    source_fps = video_rate(path)
    track = None
    if mouth == "track":
        tracking = FaceTracker(tracker)
        for frame, _ in iter_gray_frames(path):
            tracking.add(frame)
        track = tracking.finish(str(path))
        boxes = mouth_boxes(track, tracking.config.mouth_in_face)
    crops, video_start = [], None
    for index, (frame, time) in enumerate(iter_gray_frames(path)):
        if video_start is None and time is not None:
            video_start = time
        if track is None:
            crops.append(crop_mouth(torch.from_numpy(frame)[None], box, crop_size)[0].numpy())
        else:
            crops.append(crop_box(frame, boxes[min(index, len(boxes) - 1)], crop_size))
    if not crops:
        raise ConfigError(f"video file '{path}' has no decodable video frames")
    frames = torch.from_numpy(np.stack(crops))  # (T, h, w)
    face = torch.ones(frames.shape[0]) if track is None else torch.from_numpy(track.confidence[:frames.shape[0]]).float()
    rate = source_fps
    if fps is not None and abs(fps - source_fps) > 1e-3:
        index = resample_indices(frames.shape[0], source_fps, fps)
        frames, face, rate = frames[index], face[index], float(fps)
    audio, audio_rate = read_audio(path, video_start)
    mono = to_mono(audio, audio_rate, sample_rate)
    return {
        "mouth": frames,
        "audio": log_mel_frames(mono, sample_rate, rate, frames.shape[0], n_mels, subframes),
        "fps": rate,
        "source_fps": source_fps,
        "face": face,
    }
