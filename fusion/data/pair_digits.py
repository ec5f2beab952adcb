"""Build an audio-visual (optionally captioned) manifest from a folder of digit images and one of recordings.

    python -m fusion.commands.manifest builder=pair_digits builder.images=../shared/data/mnist \
        builder.audio=../shared/data/fsdd/recordings builder.test_speaker=theo \
        builder.out=datasets/mnist_fsdd/manifest.csv [builder.degrade=0.6] [builder.captions=true]

Images: a folder with `labels.csv` (columns `file,label`) or one sub-folder per label. Recordings: files named
`<label>_<speaker>_<take>.wav` (the Free Spoken Digit Dataset convention). Each recording is paired with
`images_per_recording` images of the same label; train and test draw from disjoint image pools, and all
recordings of `test_speaker` form the test split (speaker-disjoint); the `group` column names each row's
speaker (so `cross_fit.folds` holds out whole speakers). `degrade` writes noisy, occluded
copies of the images next to the manifest and uses those instead.
"""

from __future__ import annotations

import csv
import random
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from fusion.data.builtin_digits import WORDS
from fusion.errors import ConfigError

RECORDING = re.compile(r"^(?P<label>[^_]+)_(?P<speaker>[^_]+)_(?P<take>[^_.]+)\.(wav|flac|ogg)$", re.IGNORECASE)
CAPTIONS = ["the digit {w}", "a spoken {w}", "a handwritten {w}", "the number {w}"]


def list_images(folder: Path) -> dict[str, list[Path]]:
    """label -> image paths, from labels.csv or from one sub-folder per label."""
    by_label: dict[str, list[Path]] = defaultdict(list)
    labels_csv = folder / "labels.csv"
    if labels_csv.exists():
        for row in csv.DictReader(open(labels_csv)):
            by_label[row["label"].strip()].append(folder / row["file"])
    else:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            by_label[sub.name] = sorted(q for q in sub.iterdir() if q.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if not by_label:
        raise ConfigError(f"builder.images: no labels.csv and no label sub-folders in '{folder}'")
    return by_label


def list_recordings(folder: Path) -> list[tuple[str, str, Path]]:
    """(label, speaker, path) for every recording named <label>_<speaker>_<take>.wav."""
    found, unmatched = [], []
    for path in sorted(folder.iterdir()):
        match = RECORDING.match(path.name)
        if match:
            found.append((match["label"], match["speaker"], path))
        elif path.is_file() and path.suffix.lower() in (".wav", ".flac", ".ogg"):
            unmatched.append(path.name)
    if unmatched:
        raise ConfigError(f"builder.audio: {len(unmatched)} file(s) in '{folder}' not named <label>_<speaker>_<take>.wav, "
                          f"e.g. '{unmatched[0]}'")
    if not found:
        raise ConfigError(f"builder.audio: no recordings in '{folder}'")
    return found


def degrade_image(path: Path, out: Path, level: float, rng: np.random.Generator) -> None:
    """Gaussian noise (sigma = level) and a random occluding block covering about `level` of the image."""
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    h, w = pixels.shape
    bh, bw = int(h * np.sqrt(level) * rng.uniform(0.85, 1.15)), int(w * np.sqrt(level) * rng.uniform(0.85, 1.15))
    bh, bw = min(bh, h), min(bw, w)
    y0, x0 = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
    pixels[y0 : y0 + bh, x0 : x0 + bw] = rng.uniform(0, 1)
    pixels = np.clip(pixels + rng.normal(0, level, pixels.shape), 0, 1)
    Image.fromarray((pixels * 255).astype(np.uint8)).save(out)


def caption_for(label: str, rng: random.Random) -> str:
    word = WORDS[int(label)] if label.isdigit() and int(label) < 10 else label
    return rng.choice(CAPTIONS).format(w=word)


def build(images: str | Path, audio: str | Path, out: str | Path, test_speaker: str, val_speaker: str | None = None,
          images_per_recording: int = 2, degrade: float = 0.0, captions: bool = False, seed: int = 0) -> dict[str, int]:
    """Writes the manifest `out`; returns the number of rows per split."""
    images, audio, out = Path(images).expanduser(), Path(audio).expanduser(), Path(out).expanduser()
    for key, folder in (("builder.images", images), ("builder.audio", audio)):
        if not folder.is_dir():
            raise ConfigError(f"{key}: folder '{folder}' does not exist")
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    by_label = list_images(images)
    recordings = list_recordings(audio)
    speakers = sorted({s for _, s, _ in recordings})
    for name, speaker in (("builder.test_speaker", test_speaker), ("builder.val_speaker", val_speaker)):
        if speaker is not None and speaker not in speakers:
            raise ConfigError(f"{name} '{speaker}' not among the speakers {speakers}")
    pools = {}
    for label, paths in by_label.items():  # disjoint image pools per split
        paths = paths[:]
        rng.shuffle(paths)
        cut = len(paths) // 4
        pools[("test", label)], pools[("train", label)] = paths[:cut], paths[cut:]
        pools[("val", label)] = pools[("train", label)]
    out.parent.mkdir(parents=True, exist_ok=True)
    if degrade > 0:
        (out.parent / "degraded").mkdir(exist_ok=True)
    counts: dict[str, int] = defaultdict(int)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "label", "group", "image", "audio"] + (["text"] if captions else []))
        for label, speaker, path in recordings:
            split = "test" if speaker == test_speaker else "val" if speaker == val_speaker else "train"
            pool = pools.get((split, label))
            if not pool:
                raise ConfigError(f"builder.images: no image with label '{label}' for recording '{path.name}'")
            for image in rng.sample(pool, min(images_per_recording, len(pool))):
                if degrade > 0:
                    target = out.parent / "degraded" / f"{image.stem}_{path.stem}.png"
                    degrade_image(image, target, degrade, np_rng)
                    image = target
                row = [split, label, speaker, str(image.resolve()), str(path.resolve())]
                writer.writerow(row + ([caption_for(label, rng)] if captions else []))
                counts[split] += 1
    return dict(counts)
