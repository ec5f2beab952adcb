"""Files the toolkit writes: where they go (`FUSION_HOME`) and how (atomically, through temp + rename).

Every file is written to a hidden temporary name beside its target, flushed, fsynced and renamed over the
target with `os.replace` (atomic on POSIX); the folder is then fsynced so the rename survives a power loss.
A crash at any moment leaves the previous complete file or the new complete one, never a torn file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TEMP_SUFFIX = ".tmp"


def fusion_home() -> Path:
    """Root of the data and caches the toolkit writes: `$FUSION_HOME`, else the user cache folder."""
    configured = os.environ.get("FUSION_HOME")
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("fusion", appauthor=False))


def fsync_directory(folder: str | Path) -> None:
    """Makes a rename/unlink in `folder` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path_for(path: Path) -> Path:
    """A unique hidden temporary name next to `path`: `.<name>.<pid>.<random>.tmp`."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Deletes temporary files of `path` left by writers that no longer run (e.g. killed mid-write)."""
    removed = []
    for candidate in path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"):
        parts = candidate.name[len(path.name) + 2 :].split(".")
        pid = int(parts[0]) if parts and parts[0].isdigit() else None
        if pid is not None and (pid == os.getpid() or process_alive(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Opens a temporary file for writing that replaces `path` only when the block ends without an error.

    Example:
        with atomic_write(run_dir / "metrics.json") as f:
            json.dump(metrics, f)

    Args:
        path: the final file; its folder is created if needed.
        mode: "w" (text) or "wb" (binary).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yields an empty temporary folder beside `path` that replaces `path` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(path.parent)
