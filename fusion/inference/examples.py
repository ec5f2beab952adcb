"""New examples for prediction: a manifest file, a pandas DataFrame or one dict -> validated rows -> batches.

The checks are those of training (fusion/data/manifest.py: every row, column and file is checked and every
media file decoded once, all problems reported together; `on_error="skip"` skips bad rows instead), except
that `label` is optional: rows with a label are scored, rows without one are only predicted.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fusion.data.dataset import Collate, ManifestDataset, decode_media
from fusion.data.manifest import (
    FILE_MODALITIES,
    MODALITIES,
    ManifestError,
    ManifestRow,
    Problem,
    check_media,
    read_rows,
)
from fusion.data.media import MediaError
from fusion.inference.preprocessing import Preprocessing

log = logging.getLogger(__name__)

NO_LABEL = -1  # class id of rows without a label in a batch


@dataclass
class Examples:
    """Validated, decoded examples: `rows` (ManifestRow, `label` "" when absent), and the skipped problems."""

    source: str
    rows: list[ManifestRow]
    decoded: dict[tuple[int, str], object]
    skipped: list[Problem] = field(default_factory=list)
    has_labels: bool = False


def records_of(source: object, base: Path | None = None) -> tuple[list[dict[str, str] | None], list[Problem], Path, str]:
    """Raw string records of a manifest path, a DataFrame or one dict, their parse problems, the folder that
    relative paths resolve against (the manifest's, else `base`, else the working folder) and a display name."""
    if isinstance(source, str | Path):
        path = Path(source).expanduser()
        records, problems = read_rows(path)
        return records, problems, path.resolve().parent, str(path)
    base = Path(base or ".").resolve()
    if isinstance(source, Mapping):
        return [{str(k): cell_text(v) for k, v in source.items()}], [], base, "example"
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # a pandas DataFrame
        records = [{str(k): cell_text(v) for k, v in record.items()} for record in source.to_dict("records")]
        return records, [], base, "DataFrame"
    raise TypeError(f"predict() takes a manifest path, a pandas DataFrame or a dict, not {type(source).__name__}")


def cell_text(value: object) -> str:
    """A DataFrame/dict cell as manifest text: None/NaN -> "" (missing), 7.0 -> "7"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def validate(records: list[dict[str, str] | None], base: Path, modalities: list[str], classes: list[str],
             source: str) -> tuple[list[ManifestRow], list[Problem], bool]:
    """Checks every record as the training manifest check does; `label`, if given, must be a trained class."""
    columns = {k for r in records if r for k in r}
    used = [m for m in modalities if m in columns]
    ignored = sorted((columns & set(MODALITIES)) - set(modalities))
    if ignored:
        log.warning("%s: column(s) %s ignored: the model was trained on %s", source, ignored, modalities)
    if not used:
        raise ManifestError(source, [Problem(0, "modalities", f"has none of the model's modality columns {modalities}")])
    known = set(classes)
    rows, problems = [], []
    for number, raw in enumerate(records, start=1):
        if raw is None:
            continue
        row_problems = []
        label = (raw.get("label") or "").strip()
        if label and label not in known:
            row_problems.append(Problem(number, "label", f"label '{label}' is not one of the model's classes {classes}"))
        media, media_problems = check_media(number, raw, used, base)
        row_problems += media_problems
        if row_problems:
            problems.extend(row_problems)
        else:
            rows.append(ManifestRow(number, label, None, media))
    return rows, problems, "label" in columns


def prepare(source: object, prep: Preprocessing, classes: list[str], on_error: str = "raise",
            base: Path | None = None) -> Examples:
    """Reads, checks and decodes `source` (manifest path, DataFrame or dict).

    Raises:
        ManifestError: listing every problem, when `on_error="raise"` and there is one (or no usable row).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"data.on_error must be 'raise' or 'skip', got '{on_error}'")
    records, problems, folder, name = records_of(source, base)
    rows, row_problems, has_labels = validate(records, folder, prep.modalities, classes, name)
    problems += row_problems
    good, decoded = [], {}
    for row in rows:
        values, failed = {}, []
        for m, value in row.media.items():
            if m in FILE_MODALITIES:
                try:
                    values[(row.row, m)] = decode_media(value, m, prep.image_channels, prep.sample_rate, prep.audio_samples)
                except MediaError as err:
                    failed.append(Problem(row.row, m, err.reason, value))
        problems += failed
        if not failed:
            good.append(row)
            decoded.update(values)
    problems.sort(key=lambda p: (p.row, p.column))
    if problems and on_error == "raise":
        raise ManifestError(name, problems)
    if not good:
        raise ManifestError(name, problems or [Problem(0, "rows", "no rows to predict")])
    if problems:
        log.warning("%s: skipped %d problem(s) (on_error=skip)", name, len(problems))
    return Examples(name, good, decoded, problems, has_labels)


def batches(examples: Examples, prep: Preprocessing, classes: list[str], batch_size: int = 64) -> Iterator[dict]:
    """Batch dicts as the training loaders build them (`label` = -1 where a row has none, `row` = row number)."""
    class_index = defaultdict(lambda: NO_LABEL, {c: i for i, c in enumerate(classes)})
    dataset = ManifestDataset(examples.rows, class_index, prep.modalities, prep.image_transform(), prep.image_channels,
                              prep.sample_rate, prep.audio_samples, cache=True, preloaded=examples.decoded)
    collate = Collate(prep.modalities, prep.tokenizer(), prep.max_text_length,
                      (prep.image_channels, prep.image_size, prep.image_size), prep.audio_samples)
    for start in range(0, len(dataset), batch_size):
        yield collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
