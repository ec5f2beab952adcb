"""Fast checks of a media file without decoding its samples: header, declared size, and truncation.

`check_header` reads the header (format, size, sample rate, frame count) and the parts of the file that
show whether it is complete: every PNG chunk's CRC up to IEND, the JPEG end-of-image marker, the WAV data chunk
against the file's length, the last audio frame, the first video frame. A file that passes can still hold bad
samples (NaN audio, a corrupt JPEG scan); `data.validate=decode` decodes every file to find those too.
"""

from __future__ import annotations

import os
import struct

import soundfile
from PIL import Image

from fusion.data.media import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

JPEG_TAIL = 1024  # bytes at the end of a JPEG searched for the end-of-image marker (some writers pad)


def check_header(path: str, modality: str) -> str | None:
    """Why `path` is not a usable `modality` file ("cannot decode image (...)", ...), or None if it looks whole."""
    check = {"image": image_problem, "audio": audio_problem, "video": video_problem}[modality]
    try:
        reason = check(path)
    except Exception as err:  # parsers raise many types (struct.error, IndexError, ...) on hostile files
        reason = f"{type(err).__name__}: {err}"
    return None if reason is None else f"cannot decode {modality} ({reason})"


def image_problem(path: str) -> str | None:
    """PNG: every chunk's CRC up to IEND; JPEG: the end-of-image marker; others: the header."""
    with Image.open(path) as img:  # raises DecompressionBombError for absurd sizes, as decoding would
        fmt, (width, height) = img.format, img.size
        if width < 1 or height < 1:
            return f"image is {width}x{height} pixels"
        if fmt == "PNG":
            img.verify()  # reads every chunk and checks its CRC: a truncated or altered file fails
    if fmt == "JPEG":
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - JPEG_TAIL))
            if b"\xff\xd9" not in f.read():
                return "truncated JPEG: no end-of-image marker"
    return None


def audio_problem(path: str) -> str | None:
    """Sample rate, frame count, WAV data chunk against the file length, and the last frame readable."""
    if path.lower().endswith((".wav", ".wave")):
        reason = wav_truncation(path)
        if reason:
            return reason
    with soundfile.SoundFile(path) as f:
        if not MIN_SAMPLE_RATE <= f.samplerate <= MAX_SAMPLE_RATE:
            return f"implausible sample rate {f.samplerate} Hz (expected {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE})"
        if f.frames <= 0:
            return "audio has no samples"
        if f.seekable():
            f.seek(f.frames - 1)
            if len(f.read(1, dtype="float32")) != 1:
                return "the last frame the header announces cannot be read"
    return None


def wav_truncation(path: str) -> str | None:
    """A RIFF/WAVE file whose `data` chunk declares more bytes than the file holds, else None."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None  # not a plain RIFF WAVE: left to libsndfile
        order = "<" if head[:4] == b"RIFF" else ">"
        position = 12
        while position + 8 <= size:
            f.seek(position)
            kind, length = struct.unpack(order + "4sI", f.read(8))
            if kind == b"data":
                if length in (0xFFFFFFFF, 0):  # streaming writers leave the size open
                    return None
                available = size - position - 8
                return None if length <= available else f"truncated WAV: data chunk declares {length} bytes, file holds {available}"
            position += 8 + length + (length & 1)
    return None


def video_problem(path: str) -> str | None:
    """A video stream with a known frame rate whose first frame decodes."""
    import av  # PyAV: imported here so image/audio checks do not load FFmpeg

    with av.open(path) as container:
        if not container.streams.video:
            return "no video stream"
        stream = container.streams.video[0]
        if not (stream.average_rate or stream.guessed_rate):
            return "cannot determine the frame rate"
        for _ in container.decode(video=0):
            return None
    return "no decodable video frame"
