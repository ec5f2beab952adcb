"""Writes a manifest of N rows (image + audio + text, every file distinct) for the data-path benchmarks.

Rows are built-in-style digits: a bank of 200 rendered digit images and 200 synthesized spoken digits per run
(fusion/data/builtin_digits.py), each row's copy made distinct with its own faint noise (images: in the top-left
32 x 32 pixels), so content-keyed caches see N different files, as with real data. Files go to <out>/images/<k>/ and <out>/audio/<k>/ (1,000 per
folder); the manifest is <out>/manifest.csv (split: 80 % train, 10 % val, 10 % test). Written once: an existing
complete folder is reused.

    python benchmarks/data_scale/generate.py --rows 10000 --out /tmp/data_scale/10k
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

from fusion.data.builtin_digits import (
    SAMPLE_RATE,
    WORDS,
    make_caption,
    render_digit_image,
    synthesize_spoken_digit,
)

BANK = 200  # rendered images and recordings per generation (20 per digit)
PER_FOLDER = 1000
NOISE_PATCH = 32  # pixels per side of the corner each row perturbs (larger images stay compressible)


def bank(seed: int, image_size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """BANK digit images (uint8, image_size x image_size) and recordings (float32, 1 s at 8 kHz); index i is
    digit i % 10."""
    images, waves = [], []
    for i in range(BANK):
        rng = np.random.default_rng([seed, i])
        image = render_digit_image(i % 10, rng)
        if image.size != (image_size, image_size):
            image = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
        images.append(np.asarray(image))
        waves.append(synthesize_spoken_digit(i % 10, rng))
    return images, waves


def write_rows(out: Path, start: int, stop: int, seed: int, image_size: int) -> list[list[str]]:
    """Writes the files of rows [start, stop) and returns their manifest rows."""
    images, waves = bank(seed, image_size)
    rows = []
    for i in range(start, stop):
        rng = np.random.default_rng([seed, 1, i])
        k = int(rng.integers(BANK))
        digit = k % 10
        folder = f"{i // PER_FOLDER:04d}"
        image_path, audio_path = f"images/{folder}/{i:06d}.png", f"audio/{folder}/{i:06d}.wav"
        pixels = images[k].copy()
        patch = pixels[:NOISE_PATCH, :NOISE_PATCH]  # this row's own noise (the whole image at 32 px)
        patch[...] = np.clip(patch.astype(np.int16) + rng.integers(-6, 7, patch.shape), 0, 255)
        Image.fromarray(pixels).save(out / image_path)
        wave = np.clip(waves[k] + rng.normal(0, 0.003, waves[k].shape), -1, 1).astype(np.float32)
        soundfile.write(out / audio_path, wave, SAMPLE_RATE, subtype="PCM_16")
        split = "train" if i % 10 < 8 else "val" if i % 10 == 8 else "test"
        rows.append([split, WORDS[digit], image_path, audio_path, make_caption(digit, rng)])
    return rows


def generate(rows: int, out: Path, seed: int = 0, image_size: int = 32, processes: int | None = None) -> Path:
    """Writes (or reuses) the manifest of `rows` rows under `out`; returns the manifest path."""
    manifest = out / "manifest.csv"
    if manifest.is_file():
        return manifest
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for kind in ("images", "audio"):
        for k in range(-(-rows // PER_FOLDER)):
            (partial / kind / f"{k:04d}").mkdir(parents=True, exist_ok=True)
    processes = processes or len(os.sched_getaffinity(0))
    bounds = np.linspace(0, rows, processes + 1).astype(int)
    jobs = [(partial, int(a), int(b), seed, image_size) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        parts = pool.starmap(write_rows, jobs)
    with open(partial / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "label", "image", "audio", "text"])
        for part in parts:
            writer.writerows(part)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=32, help="pixels per side (32: the built-in tower's)")
    args = parser.parse_args()
    start = time.perf_counter()
    manifest = generate(args.rows, args.out, args.seed, args.image_size)
    print(f"{manifest} ({args.rows} rows, {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
