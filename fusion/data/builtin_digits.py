"""The built-in audio-visual-text digits set, generated offline and deterministically on first use.

Each example is a digit 0-9 seen three ways: a handwriting-like image (jittered strokes, random affine,
blur and noise), a synthesized spoken digit (harmonic voice with digit-specific vowel formants and
consonant bursts, varied pitch, speed and noise) and a short noisy caption. Each modality is independently
*unreliable* for some of the examples (images: heavy occlusion in 25 %; speech: drowned in noise in 3 %;
captions: uninformative in 35 % and only a hint in another 35 %), so each modality alone is weaker than
their fusion, a per-sample gate has something to learn, and speech and images are still reliable enough
for cross-modal retrieval between them to be meaningful.
"""

from __future__ import annotations

import csv
import fcntl
import logging
import math
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageDraw, ImageFilter

from fusion.files import atomic_directory, fusion_home

log = logging.getLogger(__name__)

VERSION = "3"
IMAGE_CORRUPT_P = 0.25  # share of images made unreliable (occluded + heavy noise)
AUDIO_CORRUPT_P = 0.03  # share of recordings drowned in noise (SNR -14 to -9 dB)
SAMPLE_RATE = 8000
IMAGE_SIZE = 32
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Stroke templates in a unit box (x right, y down); each digit is a list of polylines.
_STROKES = {
    0: [[(0.5, 0.1), (0.8, 0.25), (0.82, 0.75), (0.5, 0.9), (0.2, 0.75), (0.18, 0.25), (0.5, 0.1)]],
    1: [[(0.35, 0.25), (0.55, 0.1), (0.55, 0.9)], [(0.35, 0.9), (0.75, 0.9)]],
    2: [[(0.2, 0.3), (0.35, 0.12), (0.65, 0.12), (0.78, 0.32), (0.2, 0.88), (0.82, 0.88)]],
    3: [[(0.2, 0.15), (0.75, 0.15), (0.45, 0.45), (0.78, 0.62), (0.65, 0.88), (0.22, 0.85)]],
    4: [[(0.65, 0.9), (0.65, 0.1), (0.18, 0.65), (0.85, 0.65)]],
    5: [[(0.78, 0.12), (0.25, 0.12), (0.22, 0.45), (0.7, 0.45), (0.78, 0.72), (0.55, 0.9), (0.2, 0.82)]],
    6: [[(0.72, 0.12), (0.35, 0.35), (0.22, 0.7), (0.45, 0.9), (0.75, 0.75), (0.65, 0.5), (0.25, 0.6)]],
    7: [[(0.18, 0.12), (0.82, 0.12), (0.4, 0.9)], [(0.35, 0.5), (0.7, 0.5)]],
    8: [[(0.5, 0.5), (0.22, 0.3), (0.5, 0.1), (0.78, 0.3), (0.5, 0.5), (0.2, 0.72), (0.5, 0.9), (0.8, 0.72), (0.5, 0.5)]],
    9: [[(0.75, 0.4), (0.5, 0.55), (0.25, 0.38), (0.5, 0.12), (0.75, 0.3), (0.72, 0.9)]],
}

# Spoken digits: syllables of (F1, F2) vowel formants in Hz, plus an onset consonant band (Hz) or None.
_VOWELS = {
    "i": (300, 2300), "e": (500, 1900), "a": (750, 1300), "o": (500, 900), "u": (320, 800), "@": (550, 1500),
}
_SPEECH = {
    0: [("s", "i"), (None, "o")],
    1: [(None, "@"), ("n", "@")],
    2: [("t", "u")],
    3: [("th", "i")],
    4: [("f", "o")],
    5: [("f", "a"), (None, "i")],
    6: [("s", "i"), ("k", "e")],
    7: [("s", "e"), ("v", "@")],
    8: [(None, "e"), ("t", "i")],
    9: [("n", "a"), ("n", "i")],
}
_CONSONANTS = {"s": (3000, 3900), "t": (1800, 3600), "th": (1200, 2600), "f": (900, 3800), "k": (1400, 2200),
               "v": (300, 1200), "n": (150, 450)}

_EXACT_CAPTIONS = ["a handwritten {w}", "the number {w}", "digit {d}", "someone says {w}", "a {w}", "this is a {w}"]
_HINT_CAPTIONS = {
    "parity": ["an {p} number", "some {p} digit"],
    "size": ["a digit {s} than five", "a number {s} than five"],
}
_EMPTY_CAPTIONS = ["a blurry picture", "someone speaking", "a digit", "a short clip", "a noisy recording", "a number"]


def default_root() -> Path:
    """Where the built-in set lives: `$FUSION_HOME/datasets/digits` (see `fusion.files.fusion_home`)."""
    return fusion_home() / "datasets" / "digits"


def ensure_builtin_digits(root: str | Path | None = None, n_train: int = 3000, n_val: int = 500,
                          n_test: int = 1000, seed: int = 0) -> Path:
    """Generates the set into `root` once (atomically: a temp folder renamed into place); returns manifest path."""
    root = Path(root) if root else default_root()
    tag = f"v{VERSION}-{n_train}-{n_val}-{n_test}-{seed}"
    manifest = root / "manifest.csv"
    root.parent.mkdir(parents=True, exist_ok=True)
    # one generator at a time (parallel runs, DDP ranks); the others wait and reuse its result
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "VERSION").exists() or (root / "VERSION").read_text().strip() != tag or not manifest.exists():
            _generate_atomically(root, tag, n_train, n_val, n_test, seed)
    return manifest


def _generate_atomically(root: Path, tag: str, n_train: int, n_val: int, n_test: int, seed: int) -> None:
    log.info("generating the built-in digits set (%d/%d/%d rows) in %s", n_train, n_val, n_test, root)
    with atomic_directory(root) as tmp:
        _generate(tmp, n_train, n_val, n_test, seed)
        (tmp / "VERSION").write_text(tag + "\n")


def _generate(out: Path, n_train: int, n_val: int, n_test: int, seed: int) -> None:
    (out / "images").mkdir()
    (out / "audio").mkdir()
    rng = np.random.default_rng(seed)
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "label", "image", "audio", "text"])
        for i, split in enumerate(splits):
            digit = int(rng.integers(10))
            sample_rng = np.random.default_rng([seed, i])
            image_path = f"images/{i:05d}.png"
            audio_path = f"audio/{i:05d}.wav"
            render_digit_image(digit, sample_rng).save(out / image_path)
            soundfile.write(out / audio_path, synthesize_spoken_digit(digit, sample_rng), SAMPLE_RATE, subtype="PCM_16")
            caption = make_caption(digit, sample_rng)
            # A few rows miss a modality, so masking is exercised by the default data too.
            r = sample_rng.random()
            row = [split, WORDS[digit], image_path, audio_path, caption]
            if r < 0.03:
                row[4] = ""
            elif r < 0.06:
                row[3] = ""
            elif r < 0.08:
                row[2] = ""
            writer.writerow(row)


def render_digit_image(digit: int, rng: np.random.Generator, corrupt_p: float = IMAGE_CORRUPT_P) -> Image.Image:
    """Draws jittered strokes, then applies a random affine, blur, noise and (with `corrupt_p`) heavy occlusion."""
    scale = 4
    size = IMAGE_SIZE * scale
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    width = int(rng.uniform(2.0, 4.5) * scale)
    for stroke in _STROKES[digit]:
        pts = [((x + rng.normal(0, 0.035)) * size, (y + rng.normal(0, 0.035)) * size) for x, y in stroke]
        draw.line(pts, fill=255, width=width, joint="curve")
    angle = rng.uniform(-18, 18)
    shear = rng.uniform(-0.25, 0.25)
    zoom = rng.uniform(0.75, 1.05)
    tx, ty = rng.uniform(-0.08, 0.08, size=2) * size
    c = size / 2
    a, b = math.cos(math.radians(angle)) / zoom, math.sin(math.radians(angle)) / zoom
    matrix = (a, b + shear, c - a * c - (b + shear) * c - tx, -b, a, c + b * c - a * c - ty)
    img = img.transform((size, size), Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR)
    img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    noise = rng.uniform(0.05, 0.2)
    if rng.random() < corrupt_p:
        # Unreliable view: a large occluding block plus strong noise.
        h = int(rng.uniform(0.55, 0.8) * IMAGE_SIZE)
        w = int(rng.uniform(0.6, 0.9) * IMAGE_SIZE)
        y0, x0 = rng.integers(0, IMAGE_SIZE - h + 1), rng.integers(0, IMAGE_SIZE - w + 1)
        pixels[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0.0, 1.0)
        noise = rng.uniform(0.35, 0.6)
    pixels = np.clip(pixels + rng.normal(0, noise, pixels.shape), 0, 1)
    return Image.fromarray((pixels * 255).astype(np.uint8), mode="L")


def synthesize_spoken_digit(digit: int, rng: np.random.Generator, corrupt_p: float = AUDIO_CORRUPT_P,
                            seconds: float = 1.0) -> np.ndarray:
    """Synthesizes a spoken digit (float32 in [-1, 1], `seconds` long at 8 kHz) with varied pitch/speed/noise."""
    total = int(seconds * SAMPLE_RATE)
    speed = rng.uniform(0.8, 1.25)
    f0_base = rng.uniform(85, 260)
    formant_shift = rng.uniform(0.9, 1.12)
    pieces = []
    for consonant, vowel in _SPEECH[digit]:
        if consonant is not None:
            lo, hi = _CONSONANTS[consonant]
            n = int(0.07 / speed * SAMPLE_RATE)
            spectrum = np.fft.rfft(rng.normal(0, 1, n))
            freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
            spectrum[(freqs < lo * formant_shift) | (freqs > hi * formant_shift)] = 0
            burst = np.fft.irfft(spectrum, n)
            pieces.append(0.5 * burst / (np.abs(burst).max() + 1e-8) * np.hanning(n))
        n = int(rng.uniform(0.18, 0.24) / speed * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        f0 = f0_base * (1 + rng.uniform(-0.15, 0.15) * t / t[-1])  # gliding pitch
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        f1, f2 = (f * formant_shift for f in _VOWELS[vowel])
        voice = np.zeros(n)
        for k in range(1, int(3800 / f0_base)):
            fk = k * f0_base
            amp = np.exp(-((fk - f1) / 120) ** 2) + 0.7 * np.exp(-((fk - f2) / 180) ** 2) + 0.02 / k
            voice += amp * np.sin(k * phase)
        pieces.append(voice / (np.abs(voice).max() + 1e-8) * np.hanning(n) ** 0.5)
        pieces.append(np.zeros(int(0.03 * SAMPLE_RATE)))
    speech = np.concatenate(pieces)[:total]
    wave = np.zeros(total)
    start = int(rng.integers(0, total - len(speech) + 1))
    wave[start : start + len(speech)] = speech * rng.uniform(0.4, 0.9)
    snr_db = rng.uniform(-14, -9) if rng.random() < corrupt_p else rng.uniform(8, 25)
    power = np.mean(speech**2) * rng.uniform(0.4, 0.9) ** 2
    wave += rng.normal(0, math.sqrt(power / 10 ** (snr_db / 10)), total)
    return (wave / max(1.0, np.abs(wave).max())).astype(np.float32)


def make_caption(digit: int, rng: np.random.Generator) -> str:
    """A short caption: exact (30 %), a parity or size hint (35 %), or uninformative (35 %); typos added."""
    r = rng.random()
    if r < 0.3:
        caption = str(rng.choice(_EXACT_CAPTIONS)).format(w=WORDS[digit], d=digit)
    elif r < 0.65:
        if rng.random() < 0.5:
            caption = str(rng.choice(_HINT_CAPTIONS["parity"])).format(p="even" if digit % 2 == 0 else "odd")
        else:
            if digit == 5:
                return "a digit equal to five" if rng.random() < 0.5 else "a digit"
            caption = str(rng.choice(_HINT_CAPTIONS["size"])).format(s="smaller" if digit < 5 else "bigger")
    else:
        caption = str(rng.choice(_EMPTY_CAPTIONS))
    chars = list(caption)
    for _ in range(int(rng.poisson(0.8))):
        i = int(rng.integers(len(chars)))
        chars[i] = chr(int(rng.integers(97, 123)))
    return "".join(chars)
