"""sha256 of exported files, recorded in config.json and checked before anything is loaded from them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fusion.runtime.checkpoints import CheckpointError


class ExportError(CheckpointError):
    """An export folder is incomplete, truncated or altered; the message names the file and what to do."""


def file_digest(path: Path) -> dict:
    """{"sha256": hex digest, "bytes": size} of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def verify_file(folder: Path, name: str, expected: dict) -> Path:
    """Checks `folder/name` against its recorded size and sha256.

    Raises:
        ExportError: when the file is missing, has another size (truncated) or another digest (altered).
    """
    path = folder / name
    fix = "export the run again with export.py"
    if not path.is_file():
        raise ExportError(f"exported model file '{path}' is missing; {fix}")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise ExportError(f"exported model file '{path}' is truncated or altered: {size} bytes, config.json records "
                          f"{expected['bytes']}; {fix}")
    actual = file_digest(path)["sha256"]
    if actual != expected["sha256"]:
        raise ExportError(f"exported model file '{path}' is corrupt or altered: its sha256 {actual[:16]}... does not "
                          f"match {expected['sha256'][:16]}... in config.json; {fix}")
    return path
