"""Build a spatial question manifest: 2x2 grids of four different digits and a question that points at one of them.

    python -m fusion.commands.manifest builder=grid_digits builder.images=../shared/data/mnist \
        builder.out=datasets/grid_digits/manifest.csv [builder.audio=../shared/data/fsdd/recordings]

Each row is a grid image (cells of `cell` px, the digit centred in each), a question in the `text` column that
names a position ("the digit in the top left") or a relation to another digit of the grid ("the digit right of
the 7"), and `label` = the digit it means. Pooling the image into one vector first loses where each digit is, so
only a fusion that matches words to regions can answer (fusion/fusions/cross_attention.py). Test grids are made
only of images from a held-out pool (`test_fraction` of every label), so no test digit image is seen in training.
With `audio` (recordings named `<label>_<speaker>_<take>.wav`), a share `spoken` of the relation questions names
the reference digit by a recording instead ("right of the spoken digit"; the recording is copied into the `audio`
column); other rows leave `audio` empty (masked). The `question` column says which kind each row is.
Images (and copied recordings) are written next to the manifest, with relative paths in it.
"""

from __future__ import annotations

import csv
import random
import shutil
from collections import defaultdict
from pathlib import Path

from PIL import Image

from fusion.data.builtin_digits import WORDS
from fusion.data.pair_digits import list_images, list_recordings
from fusion.errors import ConfigError

POSITIONS = {(0, 0): "top left", (0, 1): "top right", (1, 0): "bottom left", (1, 1): "bottom right"}
POSITION_QUESTIONS = ["the digit in the {p}", "which digit is {p}?", "the {p} digit"]
RELATION_QUESTIONS = ["the digit {r} the {d}", "what is {r} the {d}?"]
SPOKEN_QUESTION = "{r} the spoken digit"


def relation(target: tuple[int, int], reference: tuple[int, int]) -> str:
    """Where `target` lies from its neighbour `reference` (row, col): "right of", "left of", "above", "below"."""
    if target[0] == reference[0]:
        return "right of" if target[1] > reference[1] else "left of"
    return "below" if target[0] > reference[0] else "above"


def question_for(cells: dict[tuple[int, int], str], rng: random.Random, spoken: float = 0.0,
                 words: float = 0.0) -> tuple[str, str, str, str | None]:
    """A question about `cells` ((row, col) -> label), half of them positions, half relations (a share `spoken` of
    those with a spoken reference, a share `words` of the others naming the digit in words, "seven" for "7"):
    (text, label, kind, label of the spoken reference digit or None)."""
    target = rng.choice(sorted(cells))
    if rng.random() < 0.5:
        return rng.choice(POSITION_QUESTIONS).format(p=POSITIONS[target]), cells[target], "position", None
    reference = rng.choice([(target[0], 1 - target[1]), (1 - target[0], target[1])])  # its row or column neighbour
    r, d = relation(target, reference), cells[reference]
    if rng.random() < spoken:
        return SPOKEN_QUESTION.format(r=r), cells[target], "spoken", d
    name = WORDS[int(d)] if d.isdigit() and int(d) < 10 and rng.random() < words else d
    return rng.choice(RELATION_QUESTIONS).format(r=r, d=name), cells[target], "relation", None


def draw_grid(paths: dict[tuple[int, int], Path], cell: int) -> Image.Image:
    """The four digit images (grayscale), each centred in its cell of a 2x2 grid of side 2 * cell."""
    grid = Image.new("L", (2 * cell, 2 * cell), 0)
    for (row, col), path in paths.items():
        digit = Image.open(path).convert("L")
        if max(digit.size) > cell:
            digit.thumbnail((cell, cell))
        grid.paste(digit, (col * cell + (cell - digit.width) // 2, row * cell + (cell - digit.height) // 2))
    return grid


def split_pool(items: dict[str, list], fraction: float, rng: random.Random) -> dict[str, dict[str, list]]:
    """label -> items, shuffled and cut into {"train": ..., "test": ...} per label (test gets `fraction`)."""
    pools: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    for label, values in sorted(items.items()):
        values = sorted(values)
        rng.shuffle(values)
        cut = max(1, round(len(values) * fraction))
        pools["test"][label], pools["train"][label] = values[:cut], values[cut:]
    return pools


def build(images: str | Path, out: str | Path, rows: int = 20000, test_rows: int = 2000, test_fraction: float = 0.25,
          cell: int = 32, audio: str | Path | None = None, spoken: float = 0.5, words: float = 0.0,
          seed: int = 0) -> dict[str, int]:
    """Writes the manifest `out` and its grid images; returns the number of rows per split."""
    images, out = Path(images).expanduser(), Path(out).expanduser()
    if not images.is_dir():
        raise ConfigError(f"builder.images: folder '{images}' does not exist")
    if not 0 < test_fraction < 1 or rows < 1 or test_rows < 1 or not 0 <= spoken <= 1 or not 0 <= words <= 1:
        raise ConfigError("builder: need 0 < test_fraction < 1, rows >= 1, test_rows >= 1, 0 <= spoken <= 1 and "
                          f"0 <= words <= 1 (got {test_fraction}, {rows}, {test_rows}, {spoken}, {words})")
    rng = random.Random(seed)
    pools = split_pool(list_images(images), test_fraction, rng)
    if len([label for label, paths in pools["train"].items() if paths]) < 4:
        raise ConfigError(f"builder.images: a grid needs four different labels with images in '{images}'")
    sounds = None
    if audio is not None:
        if not Path(audio).expanduser().is_dir():
            raise ConfigError(f"builder.audio: folder '{audio}' does not exist")
        by_label = defaultdict(list)
        for label, _, path in list_recordings(Path(audio).expanduser()):
            by_label[label].append(path)
        sounds = split_pool(by_label, test_fraction, rng)
    for sub in ("images", "audio") if sounds else ("images",):
        (out.parent / sub).mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = defaultdict(int)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "label", "question", "image", "text"] + (["audio"] if sounds else []))
        for split, n in (("train", rows), ("test", test_rows)):
            pool = {label: paths for label, paths in pools[split].items() if paths}
            for i in range(n):
                labels = rng.sample(sorted(pool), 4)
                cells = dict(zip(sorted(POSITIONS), labels, strict=True))
                text, label, kind, said = question_for(cells, rng, spoken if sounds else 0.0, words)
                if kind == "spoken" and not sounds[split].get(said):  # no recording of that digit here: ask in words
                    text, label, kind, said = question_for(cells, rng, words=words)
                image = Path("images") / f"{split}_{i:06d}.png"
                draw_grid({pos: rng.choice(pool[cells[pos]]) for pos in cells}, cell).save(out.parent / image)
                row = [split, label, kind, image.as_posix(), text]
                if sounds:
                    recording = ""
                    if kind == "spoken":
                        source = rng.choice(sounds[split][said])
                        recording = (Path("audio") / source.name).as_posix()
                        if not (out.parent / recording).exists():
                            shutil.copyfile(source, out.parent / recording)
                    row.append(recording)
                writer.writerow(row)
                counts[split] += 1
    return dict(counts)
