"""Validated manifest rows stored as a few flat arrays instead of one Python object per row.

100,000 rows as `ManifestRow` objects take ~70 MB, and every forked DataLoader worker soon holds its own copy
(reference counts and the garbage collector write to every object's page). A `RowTable` keeps the same rows in
numpy arrays and one UTF-8 buffer per column (~150 bytes a row, shared by the workers as it is never written)
and builds a `ManifestRow` only when one is asked for.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from fusion.data.manifest import MODALITIES, ManifestRow


class StringColumn:
    """n strings in one buffer: string i is `blob[offsets[i]:offsets[i + 1]]` (an empty string = None)."""

    def __init__(self, blob: bytes, offsets: np.ndarray):
        self.blob, self.offsets = blob, offsets

    @classmethod
    def of(cls, values: Iterable[str | None]) -> StringColumn:
        blob, offsets = bytearray(), array("q", [0])
        for value in values:
            blob += (value or "").encode("utf-8", "surrogatepass")
            offsets.append(len(blob))
        return cls(bytes(blob), np.frombuffer(offsets, dtype=np.int64).copy())

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str | None:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return self.blob[start:stop].decode("utf-8", "surrogatepass") if stop > start else None

    def take(self, indices: Sequence[int]) -> StringColumn:
        return StringColumn.of(self[int(i)] for i in indices)


class RowTable(Sequence[ManifestRow]):
    """A read-only sequence of `ManifestRow`s held column-wise.

    Args:
        numbers: (N,) manifest row numbers.
        columns: "label", "split", "group" and each modality -> its StringColumn (None / empty = absent).
    """

    def __init__(self, numbers: np.ndarray, columns: dict[str, StringColumn]):
        self.numbers, self.columns = numbers, columns
        self.modalities = [m for m in MODALITIES if m in columns]

    @classmethod
    def of(cls, rows: Iterable[ManifestRow]) -> RowTable:
        """Packs rows (an iterator is consumed once, so the rows never all exist as objects)."""
        numbers, builders = array("q"), {k: (bytearray(), array("q", [0])) for k in ("label", "split", "group", *MODALITIES)}
        for row in rows:
            numbers.append(row.row)
            values = {"label": row.label, "split": row.split, "group": row.group} | row.media
            for key, (blob, offsets) in builders.items():
                blob += (values.get(key) or "").encode("utf-8", "surrogatepass")
                offsets.append(len(blob))
        columns = {k: StringColumn(bytes(blob), np.frombuffer(offsets, dtype=np.int64).copy())
                   for k, (blob, offsets) in builders.items() if k in ("label", "split", "group") or len(blob)}
        return cls(np.frombuffer(numbers, dtype=np.int64).copy(), columns)

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, index: int) -> ManifestRow:
        if isinstance(index, slice):
            return self.select(range(len(self))[index])
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row index {index} out of range for {len(self)} rows")
        media = {m: v for m in self.modalities if (v := self.columns[m][index]) is not None}
        return ManifestRow(int(self.numbers[index]), self.columns["label"][index], self.columns["split"][index],
                           media, self.columns["group"][index])

    def __iter__(self) -> Iterator[ManifestRow]:
        return (self[i] for i in range(len(self)))

    def __add__(self, other: Sequence[ManifestRow]) -> list[ManifestRow]:
        return [*self, *other]

    def __radd__(self, other: Sequence[ManifestRow]) -> list[ManifestRow]:
        return [*other, *self]

    def select(self, indices: Sequence[int]) -> RowTable:
        """The rows at `indices` (positions in this table), in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return RowTable(self.numbers[indices].copy(), {k: c.take(indices) for k, c in self.columns.items()})

    def present(self) -> list[str]:
        """The modalities that at least one row has."""
        return [m for m in self.modalities if np.any(np.diff(self.columns[m].offsets))]

    def values(self, column: str) -> list[str | None]:
        """Every row's value of "label", "split", "group" or a modality."""
        strings = self.columns[column]
        return [strings[i] for i in range(len(self))]

    def media(self, index: int) -> dict[str, str]:
        """Modality -> path or text of one row, without building the row."""
        return {m: v for m in self.modalities if (v := self.columns[m][index]) is not None}
