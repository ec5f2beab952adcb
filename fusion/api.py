"""The Python API: `fusion.fit(data, recipe=..., **overrides)` and `fusion.load(path)`.

    run = fusion.fit("my/manifest.csv", recipe="late", trainer={"max_epochs": 1}, data={"batch_size": 32})
    model = fusion.load(run.run_dir)             # or an export folder of export.py
    predictions = model.predict("new.csv")       # a DataFrame, as predict.py's predictions.csv
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fusion.inference.loading import load

__all__ = ["FitResult", "fit", "load", "overrides_of"]

PLAIN = re.compile(r"^[\w./:~+@-]+$")


@dataclass
class FitResult:
    """What `fit` returns: the run folder (as train.py prints it) and its final test metrics (metrics.json)."""

    run_dir: Path
    metrics: dict[str, float]

    def load(self, **kwargs):
        """The trained model as a predictor (`fusion.load(self.run_dir)`)."""
        return load(self.run_dir, **kwargs)


def fit(data, /, recipe: str = "progressive", **overrides) -> FitResult:
    """Trains `recipe` on `data` exactly as `train.py recipe=<recipe> data.manifest=<data> ...` would.

    Args:
        data: a manifest path (CSV/JSONL), or a pandas DataFrame with the manifest's columns (it is written to
            `<run folder>/manifest.csv` first, with relative file paths made absolute from the working folder).
        recipe: recipes/recipe/<name>.yaml: early, late, progressive, clip.
        **overrides: config keys as keyword arguments; nested groups as dicts, e.g.
            `trainer={"max_epochs": 1}, data={"batch_size": 32}, seed=1` is
            `trainer.max_epochs=1 data.batch_size=32 seed=1` on the command line. `run_dir=` picks the run
            folder (default: checkpoints/<recipe>/<YYYYmmdd-HHMMSS> under the working folder).

    Returns:
        FitResult with `run_dir` and `metrics`.
    """
    from omegaconf import open_dict

    from fusion.commands.app import compose_config
    from fusion.training import train

    run_dir = Path(overrides.pop("run_dir", None) or Path("checkpoints") / recipe / time.strftime("%Y%m%d-%H%M%S"))
    if not isinstance(data, str | Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        data = write_manifest(data, run_dir / "manifest.csv")
    cfg = compose_config("config", [f"recipe={recipe}", *overrides_of({"data": {"manifest": str(data)}}),
                                    *overrides_of(overrides), f"run_dir={override_value(str(run_dir))}"])
    with open_dict(cfg):
        cfg.recipe_name = recipe
    metrics = train(cfg)
    return FitResult(Path(cfg.run_dir), metrics)


def write_manifest(frame, path: Path) -> Path:
    """Writes a DataFrame as a manifest CSV; relative image/audio/video paths become absolute (working folder)."""
    frame = frame.copy()
    for column in ("image", "audio", "video"):
        if column in frame:
            frame[column] = [str(Path(v).expanduser().resolve()) if isinstance(v, str | Path) and str(v).strip() else v
                             for v in frame[column]]
    frame.to_csv(path, index=False)
    return path


def overrides_of(values: Mapping, prefix: str = "") -> list[str]:
    """Nested keyword arguments -> Hydra override strings: {"trainer": {"max_epochs": 1}} -> ["trainer.max_epochs=1"]."""
    items = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items += overrides_of(value, f"{name}.")
        else:
            items.append(f"{name}={override_value(value)}")
    return items


def override_value(value: object) -> str:
    """A Python value in Hydra's override grammar (strings quoted unless they are plain words or paths)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    text = str(value)
    if PLAIN.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
