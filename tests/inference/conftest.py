"""Tiny trained runs of every classifier kind, their export folders and manifests to predict on, built once."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fusion.training import train
from tests.helpers.recipes import compose_recipe, tiny_overrides

KINDS = ["early", "late", "progressive"]


def tiny_run(kind: str, tiny_digits: Path, run_dir: Path) -> Path:
    """Trains `kind` for one epoch on the tiny digits set into `run_dir`."""
    cfg = compose_recipe(kind, tiny_overrides(tiny_digits, run_dir, "trainer.max_epochs=1", "logger=csv"))
    train(cfg)
    return run_dir


@pytest.fixture(scope="session")
def new_manifest(tiny_digits, tmp_path_factory) -> Path:
    """The tiny test rows without labels, with every pattern of missing modalities (relative paths kept)."""
    with open(tiny_digits, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    patterns = [("image", "audio", "text"), ("image",), ("audio",), ("text",), ("image", "audio"), ("image", "text"),
                ("audio", "text")]
    path = tiny_digits.parent / "new_unlabelled.csv"  # beside the media, so relative paths resolve
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "audio", "text"])
        for i, row in enumerate(rows):
            keep = patterns[i % len(patterns)]
            writer.writerow([row[m] if m in keep else "" for m in ("image", "audio", "text")])
    return path


@pytest.fixture(scope="session")
def tiny_runs(tiny_digits, tmp_path_factory) -> dict[str, Path]:
    """kind -> run folder (early, late, progressive; one epoch each)."""
    root = tmp_path_factory.mktemp("runs")
    return {kind: tiny_run(kind, tiny_digits, root / kind) for kind in KINDS}


@pytest.fixture(scope="session")
def exports(tiny_runs, tmp_path_factory) -> dict[str, Path]:
    """kind -> export folder with model.safetensors, model.onnx and config.json (through export.py's run)."""
    from fusion.commands.app import compose_config
    from fusion.commands.export import run

    root = tmp_path_factory.mktemp("exports")
    folders = {}
    for kind, run_dir in tiny_runs.items():
        folders[kind] = root / kind
        run(compose_config("export", [f"run={run_dir}", "format=both", f"out={folders[kind]}"]))
    return folders
