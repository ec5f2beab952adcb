"""Manifest reading and validation.

A manifest is a CSV (with a header) or JSONL file with one row per example: `label`, optional `split`
(train/val/test), optional `group` (who or what a row comes from, e.g. a speaker: cross-fitting keeps a
group's rows together) and any subset of the modality columns `image`, `audio`, `video` (file paths, relative
to the manifest's folder or absolute) and `text` (the string itself). An empty cell means the modality is
missing for that row. Every problem is collected with its row number, column and path, and reported at once.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fusion.errors import ConfigError, UserError

MODALITIES = ("audio", "image", "text", "video")
FILE_MODALITIES = ("audio", "image", "video")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Problem:
    """One validation problem. `row` counts data rows from 1 (the CSV header is not a row)."""

    row: int
    column: str
    message: str
    path: str | None = None

    def __str__(self) -> str:
        where = f"row {self.row}, column '{self.column}'" if self.row > 0 else f"column '{self.column}'"
        file = f", file '{self.path}'" if self.path else ""
        return f"{where}{file}: {self.message}"


class ManifestError(UserError, ValueError):
    """Raised with every problem of a manifest listed, one per line."""

    def __init__(self, manifest: str | Path, problems: list[Problem]):
        self.manifest = str(manifest)
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:200])
        more = f"\n  ... and {len(self.problems) - 200} more" if len(self.problems) > 200 else ""
        super().__init__(
            f"manifest '{manifest}' has {len(self.problems)} problem(s):\n{shown}{more}\n"
            "Fix these rows, or pass data.on_error=skip to skip them (listed in the run folder's "
            "skipped_rows.csv)."
        )


@dataclass
class ManifestRow:
    """A parsed row: `row` is its 1-based number, `media` maps modality -> absolute path or text."""

    row: int
    label: str
    split: str | None
    media: dict[str, str] = field(default_factory=dict)
    group: str | None = None


def read_rows(path: str | Path) -> tuple[list[dict[str, str]], list[Problem]]:
    """Reads a CSV or JSONL manifest into raw string dicts (row order kept; None for an unparseable row) plus
    parse problems."""
    columns, rows, problems = iter_raw_rows(path)
    return list(rows), problems


def iter_raw_rows(path: str | Path) -> tuple[set[str], Iterator[dict[str, str] | None], list[Problem]]:
    """The columns of a CSV or JSONL manifest and its raw rows one at a time (None for an unparseable row);
    parse problems are appended to the returned list as the rows are read."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(path, [Problem(0, "manifest", "file does not exist", str(path))])
    if not path.is_file():
        raise ManifestError(path, [Problem(0, "manifest", "is not a regular file", str(path))])
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ManifestError(path, [Problem(0, "manifest", f"is not valid UTF-8 ({err.reason} at byte {err.start})", str(path))]) from None
    if "\x00" in text:
        raise ManifestError(path, [Problem(0, "manifest", "contains NUL bytes; not a text manifest", str(path))])
    problems: list[Problem] = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        columns = {k for record in _read_jsonl(text, []) if record for k in record}  # a first pass for the columns
        return columns, _read_jsonl(text, problems), problems
    header, rows = _read_csv(text, path, problems)
    return header, rows, problems


def _read_jsonl(text: str, problems: list[Problem]) -> Iterator[dict[str, str] | None]:
    # JSON Lines are separated by "\n" only: str.splitlines would also split inside strings at \u2028, \x85 ...
    start, number = 0, 0
    while start <= len(text):
        stop = text.find("\n", start)
        stop = len(text) if stop < 0 else stop
        line, start, number = text[start:stop], stop + 1, number + 1
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(Problem(number, "json", f"invalid JSON ({err.msg})"))
            yield None
            continue
        if not isinstance(record, dict):
            problems.append(Problem(number, "json", "a row must be a JSON object"))
            yield None
            continue
        yield {str(k): "" if v is None else str(v) for k, v in record.items()}


def _read_csv(text: str, path: Path, problems: list[Problem]) -> tuple[set[str], Iterator[dict[str, str] | None]]:
    # the csv module must see the raw text: quoted cells may hold newlines, and str.splitlines would also
    # split cells at \x0c, \x1c, \u2028 ...
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(path, [Problem(0, "header", "manifest is empty")]) from None
    except csv.Error as err:
        raise ManifestError(path, [Problem(0, "header", f"unreadable CSV header ({err})")]) from None
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise ManifestError(path, [Problem(0, d, "column appears more than once in the header") for d in duplicates])

    def rows() -> Iterator[dict[str, str] | None]:
        number = 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                number += 1
                problems.append(Problem(number, "csv", f"unparseable CSV ({err})"))
                yield None
                continue
            if not cells or all(not c.strip() for c in cells):
                continue
            number += 1
            if len(cells) != len(header):
                problems.append(Problem(number, "csv", f"has {len(cells)} cells, header has {len(header)}"))
                yield None
                continue
            yield dict(zip(header, cells, strict=True))

    return set(header), rows()


def parse_manifest(path: str | Path, modalities: list[str] | None = None) -> tuple[list[ManifestRow], list[Problem]]:
    """Parses and checks the structure of every row (not yet the media files).

    Args:
        path: the manifest file.
        modalities: restrict to these modality columns (None = every modality column present).

    Returns:
        The rows that passed and the problems found (row, column, message).
    """
    rows, problems = iter_manifest(path, modalities)
    return list(rows), problems


def iter_manifest(path: str | Path, modalities: list[str] | None = None) -> tuple[Iterator[ManifestRow], list[Problem]]:
    """`parse_manifest` one row at a time: the rows that pass are yielded, the problems appended to the returned
    list while iterating. Whole-file problems (no label column, ...) raise ManifestError at once."""
    path = Path(path)
    columns, raw_rows, problems = iter_raw_rows(path)
    if "label" not in columns:
        raise ManifestError(path, [Problem(0, "label", "manifest has no 'label' column")])
    present = [m for m in MODALITIES if m in columns]
    if modalities is not None:
        unknown = sorted(set(modalities) - set(MODALITIES))
        if unknown:
            raise ConfigError(f"data.modalities: unknown modality {unknown}; choose from {list(MODALITIES)}")
        missing = sorted(set(modalities) - set(present))
        if missing:
            raise ManifestError(path, [Problem(0, m, "requested in data.modalities but not a column of the manifest") for m in missing])
        present = [m for m in present if m in modalities]
    if not present:
        raise ManifestError(path, [Problem(0, "modalities", f"manifest has none of the modality columns {list(MODALITIES)}")])
    return _rows(path, raw_rows, present, problems), problems


def _rows(path: Path, raw_rows: Iterator[dict[str, str] | None], present: list[str],
          problems: list[Problem]) -> Iterator[ManifestRow]:
    base = path.resolve().parent
    for number, raw in enumerate(raw_rows, start=1):
        if raw is None:
            continue
        row_problems = []
        label = (raw.get("label") or "").strip()
        if not label:
            row_problems.append(Problem(number, "label", "empty label"))
        split = raw.get("split")
        if split is not None:
            split = split.strip().lower()
            if split not in SPLITS:
                row_problems.append(Problem(number, "split", f"unknown split '{raw.get('split')}'; expected one of {list(SPLITS)}"))
        media, media_problems = check_media(number, raw, present, base)
        row_problems += media_problems
        if row_problems:
            problems.extend(row_problems)
        else:
            yield ManifestRow(number, label, split, media, (raw.get("group") or "").strip() or None)


def check_media(number: int, raw: dict[str, str], modalities: list[str], base: Path) -> tuple[dict[str, str], list[Problem]]:
    """The modality cells of one raw row: text as is, file paths resolved against `base` and checked.

    Returns:
        (modality -> text or absolute path, problems); a row with no modality at all is a problem too.
    """
    media, problems = {}, []
    for m in modalities:
        value = (raw.get(m) or "").strip()
        if not value:
            continue
        if m not in FILE_MODALITIES:
            media[m] = value
            continue
        resolved = Path(value).expanduser()
        resolved = resolved if resolved.is_absolute() else base / resolved
        problem = check_file(resolved)
        if problem:
            problems.append(Problem(number, m, problem, str(resolved)))
        else:
            media[m] = str(resolved)
    if not media and not problems:
        problems.append(Problem(number, ",".join(modalities), "row has no modality at all (every modality cell is empty)"))
    return media, problems


def check_file(path: Path) -> str | None:
    """Returns why `path` cannot be a media file, or None if it is a readable regular file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "file does not exist"
    except OSError as err:
        return f"cannot be accessed ({err.strerror})"
    except ValueError as err:  # e.g. an embedded NUL character
        return f"is not a valid path ({err})"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (device, pipe or socket)"
    if info.st_size == 0:
        return "file is empty"
    if not os.access(path, os.R_OK):
        return "file is not readable (permissions)"
    return None
