"""The grid_digits manifest builder: every question's label is the digit it points at; test digits are held out."""

from __future__ import annotations

import csv
import re
import wave

import numpy as np
import pytest
from PIL import Image

from fusion.commands.app import compose_config
from fusion.commands.manifest import run as run_builder
from fusion.data.builtin_digits import WORDS
from fusion.data.grid_digits import POSITIONS
from fusion.errors import ConfigError

CELL = 8


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """6 tiny images per label, each one flat grey level that encodes (label, index); 3 recordings per label."""
    root = tmp_path_factory.mktemp("sources")
    (root / "images").mkdir()
    (root / "audio").mkdir()
    with open(root / "images" / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        for label in range(10):
            for i in range(6):
                name = f"{label}_{i}.png"
                Image.fromarray(np.full((6, 6), 10 + label * 24 + i * 4, dtype=np.uint8)).save(root / "images" / name)
                writer.writerow([name, label])
            for take in range(3):
                with wave.open(str(root / "audio" / f"{label}_spk_{take}.wav"), "wb") as w:
                    w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
                    w.writeframes(np.zeros(800, dtype=np.int16).tobytes())
    return root


def read_cells(path) -> dict[tuple[int, int], tuple[int, int]]:
    """(row, col) -> (label, index) decoded from the grey level at each cell's centre."""
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (2 * CELL, 2 * CELL)
    level = {pos: int(pixels[pos[0] * CELL + CELL // 2, pos[1] * CELL + CELL // 2]) - 10 for pos in POSITIONS}
    return {pos: (v // 24, (v % 24) // 4) for pos, v in level.items()}


def answer(question: str, cells: dict[tuple[int, int], int], spoken: int | None) -> int:
    """The digit a question points at, worked out independently of the builder."""
    for pos, name in POSITIONS.items():
        if name in question:
            return cells[pos]
    named = re.search(r"the (\w+)(?: digit)?\??$", question).group(1)
    reference = spoken if named == "spoken" else (WORDS.index(named) if named in WORDS else int(named))
    (row, col), = [pos for pos, label in cells.items() if label == reference]
    step = {"right of": (0, 1), "left of": (0, -1), "above": (-1, 0), "below": (1, 0)}
    (dr, dc), = [d for words, d in step.items() if words in question]
    return cells[(row + dr, col + dc)]


def test_labels_answer_the_questions_and_test_digits_are_held_out(sources, tmp_path):
    out = tmp_path / "grid" / "manifest.csv"
    cfg = compose_config("manifest", ["builder=grid_digits", f"builder.images={sources / 'images'}", f"builder.out={out}",
                                      f"builder.audio={sources / 'audio'}", "builder.rows=60", "builder.test_rows=30",
                                      f"builder.cell={CELL}", "builder.spoken=0.5"])
    assert run_builder(cfg) == {"train": 60, "test": 30}
    rows = list(csv.DictReader(open(out)))
    seen = {"train": set(), "test": set()}
    for row in rows:
        cells = read_cells(out.parent / row["image"])
        assert len({label for label, _ in cells.values()}) == 4  # four different digits
        seen[row["split"]] |= set(cells.values())
        spoken = None
        if row["question"] == "spoken":
            spoken = int((out.parent / row["audio"]).name.split("_")[0])
        else:
            assert row["audio"] == ""  # masked, not zero-filled
        assert int(row["label"]) == answer(row["text"], {p: lab for p, (lab, _) in cells.items()}, spoken), row
        assert len(row["text"].encode()) <= 30  # fits data.max_text_length=32 with [CLS] and [SEP]
    assert not seen["train"] & seen["test"]
    assert {row["question"] for row in rows} == {"position", "relation", "spoken"}


@pytest.mark.parametrize("words", [0.0, 1.0])
def test_words_sets_how_reference_digits_are_written(sources, tmp_path, words):
    out = tmp_path / "manifest.csv"
    cfg = compose_config("manifest", ["builder=grid_digits", f"builder.images={sources / 'images'}", f"builder.out={out}",
                                      "builder.rows=40", "builder.test_rows=10", f"builder.cell={CELL}",
                                      f"builder.words={words}"])
    run_builder(cfg)
    named = [re.search(r"the (\w+)\??$", row["text"]).group(1) for row in csv.DictReader(open(out))
             if row["question"] == "relation"]
    assert named and all((name in WORDS) == (words == 1.0) for name in named)
    assert all(name.isdigit() != (words == 1.0) for name in named)


def test_missing_folder_is_named(tmp_path):
    from fusion.data.grid_digits import build

    with pytest.raises(ConfigError, match="builder.images: folder .* does not exist"):
        build(tmp_path / "nowhere", tmp_path / "m.csv")
