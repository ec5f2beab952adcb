"""Builds an image-audio-text digits manifest from the shared real data (MNIST + FSDD + captions).

Every FSDD recording becomes one row, paired with an MNIST image of the same digit (drawn without
replacement, from disjoint image pools for train/val and test) and a caption naming the digit. The test
split is one FSDD speaker that never appears in training; val is a random share of the other speakers'
recordings. Paths in the manifest are absolute, so the data is read in place and never copied.

    python benchmarks/alignment/build_digits_manifest.py --out datasets/mnist_fsdd/manifest.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
from pathlib import Path

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CAPTIONS = [
    "a handwritten {w}",
    "the digit {w}",
    "the number {d}",
    "someone says {w}",
    "a spoken {w}",
    "digit {d} written by hand",
    "a {w}",
    "this is a {w}",
]
FSDD_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


def default_data_root() -> Path:
    repo = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("FUSION_REALDATA", repo.parent / "shared" / "data")).resolve()


def read_mnist(root: Path) -> list[tuple[Path, int]]:
    labels = root / "mnist" / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"MNIST labels not found: '{labels}' (set FUSION_REALDATA or --data)")
    with open(labels, newline="") as f:
        return [(root / "mnist" / row["file"], int(row["label"])) for row in csv.DictReader(f)]


def read_fsdd(root: Path) -> list[tuple[Path, int, str, int]]:
    folder = root / "fsdd" / "recordings"
    if not folder.is_dir():
        raise FileNotFoundError(f"FSDD recordings not found: '{folder}' (set FUSION_REALDATA or --data)")
    out = []
    for path in sorted(folder.iterdir()):
        match = FSDD_NAME.match(path.name)
        if match is None:
            raise ValueError(f"unexpected FSDD file name '{path}' (want digit_speaker_take.wav)")
        out.append((path, int(match.group(1)), match.group(2), int(match.group(3))))
    return out


def build_rows(
    root: Path, test_speaker: str, val_fraction: float, test_image_share: float, seed: int
) -> list[dict[str, str]]:
    """Rows {split, label, image, audio, text}; labels are digit words ("seven")."""
    rng = random.Random(seed)
    images = read_mnist(root)
    recordings = read_fsdd(root)
    speakers = sorted({r[2] for r in recordings})
    if test_speaker not in speakers:
        raise ValueError(f"--test-speaker '{test_speaker}' is not one of the FSDD speakers {speakers}")
    n_test_images = int(len(images) * test_image_share)
    pools = {"test": images[-n_test_images:], "train": images[:-n_test_images]}
    by_digit = {
        pool: {d: [p for p, label in items if label == d] for d in range(10)} for pool, items in pools.items()
    }
    for pool in by_digit.values():
        for paths in pool.values():
            rng.shuffle(paths)
    rows = []
    for path, digit, speaker, _take in recordings:
        if speaker == test_speaker:
            split = "test"
        else:
            split = "val" if rng.random() < val_fraction else "train"
        candidates = by_digit["test" if split == "test" else "train"][digit]
        if not candidates:
            raise ValueError(f"ran out of MNIST images of digit {digit} for split '{split}'")
        image = candidates.pop()
        caption = rng.choice(CAPTIONS).format(w=WORDS[digit], d=digit)
        rows.append(
            {"split": split, "label": WORDS[digit], "image": str(image), "audio": str(path), "text": caption}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=default_data_root(), help="shared real-data folder")
    parser.add_argument("--out", type=Path, default=Path("datasets/mnist_fsdd/manifest.csv"))
    parser.add_argument("--test-speaker", default="theo")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-image-share", type=float, default=0.2, help="MNIST images kept for test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = build_rows(args.data, args.test_speaker, args.val_fraction, args.test_image_share, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["split", "label", "image", "audio", "text"])
        writer.writeheader()
        writer.writerows(rows)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    print(f"wrote {len(rows)} rows to {args.out} {counts}")


if __name__ == "__main__":
    main()
