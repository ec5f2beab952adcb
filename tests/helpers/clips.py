"""Synthetic talking-face clips: tensors for the sync model and small video files for the decoders."""

import math
from fractions import Fraction

import av
import numpy as np
import torch


def speech_envelope(generator: torch.Generator, steps: int) -> torch.Tensor:
    """Syllable-like loudness in [0, 1]: random bursts of 2-6 steps separated by 1-5 steps of silence."""
    envelope = torch.zeros(steps)
    t = int(torch.randint(0, 4, (1,), generator=generator))
    while t < steps:
        length = int(torch.randint(2, 7, (1,), generator=generator))
        level = 0.4 + 0.6 * float(torch.rand(1, generator=generator))
        bump = torch.sin(torch.linspace(0, torch.pi, length + 2)[1:-1]) * level
        envelope[t:t + length] = bump[: max(0, min(length, steps - t))]
        t += length + int(torch.randint(1, 6, (1,), generator=generator))
    return envelope


def talking_clip(seed: int, frames: int = 40, subframes: int = 4, n_mels: int = 8, size: int = 8) -> dict:
    """In-sync clip: mouth crops (T, size, size) uint8 and log-mel-like audio (T * S, n_mels).

    The mouth is a dark bar whose height follows the envelope, with a texture that changes every frame in
    proportion to the envelope (articulation, so mouth motion goes with loudness); the audio energy follows the
    same envelope at the sub-frame rate.
    """
    generator = torch.Generator().manual_seed(seed)
    envelope = speech_envelope(generator, frames)  # (T,)
    rows = torch.arange(size, dtype=torch.float32)[:, None] - (size - 1) / 2  # (size, 1)
    opening = 0.5 + envelope * (size / 2 - 0.5)  # (T,) half-height of the bar
    mouth = 200.0 - 150.0 * (rows[None].abs() <= opening[:, None, None]).float().expand(frames, size, size)
    articulation = 60.0 * envelope[:, None, None] * torch.randn(mouth.shape, generator=generator)
    mouth = (mouth + articulation + 5.0 * torch.randn(mouth.shape, generator=generator)).clamp(0, 255).to(torch.uint8)
    fine = torch.nn.functional.interpolate(envelope[None, None], scale_factor=subframes, mode="linear",
                                           align_corners=False)[0, 0]  # (T*S,)
    shape = torch.rand(n_mels, generator=generator) + 0.5
    audio = torch.log(1e-3 + fine[:, None] * shape + 0.02 * torch.rand(frames * subframes, n_mels, generator=generator))
    return {"mouth": mouth, "audio": audio, "envelope": envelope}


FPS, FRAMES, WIDTH, HEIGHT, RATE = 25, 30, 96, 80, 44100
BURST = range(10, 20)  # frames with an open (bright) mouth and a loud tone
BOX = (0.5, 0.25, 0.4, 0.5)  # rows 40-72, columns 24-72


def write_clip(path, container_format: str = "mpeg", video_codec: str = "mpeg1video", audio_codec: str = "mp2",
               frames: int = FRAMES) -> None:
    """A clip (made with PyAV) whose mouth box turns white and whose audio plays a 1 kHz tone during BURST."""
    with av.open(str(path), "w", format=container_format) as out:
        video = out.add_stream(video_codec, rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = out.add_stream(audio_codec, rate=RATE, layout="stereo")
        for i in range(frames):
            image = np.full((HEIGHT, WIDTH, 3), 40, dtype=np.uint8)
            if i in BURST:
                image[40:72, 24:72] = 230
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        t = np.arange(int(RATE * frames / FPS)) / RATE
        loud = (t >= BURST.start / FPS) & (t < BURST.stop / FPS)
        wave = (0.5 * np.sin(2 * math.pi * 1000 * t) * loud + 0.001 * np.sin(2 * math.pi * 300 * t)).astype(np.float32)
        samples = np.stack([wave, wave])  # (2, L) planar
        chunk = audio.frame_size or 1152
        for start in range(0, samples.shape[1], chunk):
            piece = np.ascontiguousarray(samples[:, start:start + chunk])
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="stereo")
            frame.sample_rate = RATE
            frame.pts = start
            frame.time_base = Fraction(1, RATE)
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
