"""On-disk cache of decoded media: one memory-mapped `.npy` file per entry, written atomically.

An entry's key is a hash of the source file's bytes and of the preprocessing settings that produced it, so a
changed file, a changed image size or sample rate is a different entry, and identical files share one. Entries
are written to a hidden temporary name in the entry's folder and renamed into place (`os.replace`, atomic on
POSIX): a reader sees a whole entry or none, whichever process or run wrote it, and a writer killed mid-write
leaves only a temporary file that no reader opens (`sweep_temporary` removes those of dead writers). An entry
that still fails to load (e.g. cut short by a power loss; writes are not fsynced, for speed) counts as absent
and is written again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from pathlib import Path

import numpy as np

from fusion.files import fusion_home, process_alive

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"


def default_cache_dir() -> Path:
    """`$FUSION_HOME/cache/decoded`."""
    return fusion_home() / "cache" / "decoded"


class DiskCache:
    """Arrays on disk under `root/<2 hex>/<key>.npy`, read back memory-mapped.

    Args:
        root: cache folder (created on first write); may be shared by processes and runs.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    @staticmethod
    def _digest(settings: str) -> hashlib.blake2b:
        return hashlib.blake2b(settings.encode() + b"\0", digest_size=20)

    @staticmethod
    def key(source: bytes, settings: str) -> str:
        """Hex key of a source file's bytes and a settings string (e.g. "image/L/resize=32/crop=32")."""
        digest = DiskCache._digest(settings)
        digest.update(source)
        return digest.hexdigest()

    @staticmethod
    def file_key(path: str | Path, settings: str, piece_bytes: int = 1 << 20) -> str:
        """`key` of the bytes of the file at `path`, read in pieces (for files too large to hold at once)."""
        digest = DiskCache._digest(settings)
        with open(path, "rb") as f:
            while piece := f.read(piece_bytes):
                digest.update(piece)
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The entry as a read-only memory-mapped array, or None if there is none (or it does not load)."""
        path = self.path(key)
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            return None
        except (ValueError, OSError, EOFError) as err:  # cut short or overwritten by something else
            log.warning("disk cache: ignoring unreadable entry %s (%s)", path, err)
            return None

    def put(self, key: str, array: np.ndarray) -> Path:
        """Writes an entry atomically (temporary file + rename); concurrent writers of one key are safe."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
        try:
            with open(temp, "wb") as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        return path

    def sweep_temporary(self) -> int:
        """Deletes temporary files of writers that no longer run (killed mid-write); returns how many."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for folder in os.scandir(self.root):
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder.path):
                if not (entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX)):
                    continue
                pid = entry.name.split(".")[-3]
                if pid.isdigit() and process_alive(int(pid)):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed
