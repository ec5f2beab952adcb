"""Error-feedback memory that survives DDP's bucket rebuild and checkpoint round trips.

DDP reduces gradients in flat buckets whose layout changes after the first iteration (and starts over
from one large bucket when a run is resumed). The residual of each bucket is therefore kept flat while
the layout is stable, and re-sliced per parameter whenever it changes, so no error is lost or misplaced.
Checkpoints store it per parameter (index into ``module.parameters()``), independent of the layout.
"""

from collections.abc import Collection

import torch
import torch.distributed as dist


class ResidualStore:
    """Per-bucket flat residuals, keyed by bucket index and checked against the bucket's parameters.

    Args:
        param_index: ``id(parameter) -> position`` in ``module.parameters()`` of the wrapped module.
    """

    def __init__(self, param_index: dict[int, int]) -> None:
        self.param_index = param_index
        self._flat: dict[int, torch.Tensor] = {}  # bucket index -> (N,)
        self._layout: dict[int, tuple[int, ...]] = {}  # bucket index -> parameter positions
        self._sizes: dict[int, int] = {}  # parameter position -> entries (numel)
        self._loose: dict[int, torch.Tensor] = {}  # parameter position -> (numel,), waiting for a bucket
        self._owner: dict[int, int] = {}  # parameter position -> bucket index whose flat residual holds it

    def layout(self, bucket: dist.GradBucket) -> tuple[int, ...]:
        """Positions of the bucket's parameters, in the order their gradients sit in ``bucket.buffer()``."""
        positions = []
        for param in bucket.parameters():
            if id(param) not in self.param_index:
                raise RuntimeError("DDP bucket holds a parameter that the comm hook state does not know")
            position = self.param_index[id(param)]
            self._sizes[position] = param.numel()
            positions.append(position)
        return tuple(positions)

    def get(self, bucket: dist.GradBucket, layout: tuple[int, ...] | None = None) -> torch.Tensor | None:
        """The residual for ``bucket``, flat like ``bucket.buffer()``, or None if all zero.

        ``layout``: :meth:`layout` of the bucket if the caller already has it.
        """
        index, layout = bucket.index(), layout if layout is not None else self.layout(bucket)
        if index in self._flat and self._layout[index] == layout:
            return self._flat[index]
        # the layout changed: re-slice per parameter the buckets that hold this bucket's parameters
        stale = {self._owner[position] for position in layout if position in self._owner}
        self._spill(stale | ({index} if index in self._flat else set()))
        pieces = [self._loose.pop(position, None) for position in layout]
        if all(piece is None for piece in pieces):
            return None
        buffer = bucket.buffer()
        dtype = torch.float64 if buffer.dtype == torch.float64 else torch.float32  # residuals stay >= fp32
        flat = torch.cat([
            piece.to(device=buffer.device, dtype=dtype) if piece is not None
            else buffer.new_zeros(self._sizes[position], dtype=dtype)
            for piece, position in zip(pieces, layout, strict=True)
        ])  # (N,)
        self._store(index, flat, layout)
        return flat

    def set(self, bucket: dist.GradBucket, residual: torch.Tensor, layout: tuple[int, ...] | None = None) -> None:
        """Stores the new residual of ``bucket`` (flat, same length as its buffer)."""
        index, layout = bucket.index(), layout if layout is not None else self.layout(bucket)
        if self._layout.get(index) != layout:
            stale = {self._owner[position] for position in layout if position in self._owner}
            self._spill(stale | ({index} if index in self._flat else set()))
            for position in layout:
                self._loose.pop(position, None)
        self._store(index, residual, layout)

    def _store(self, index: int, flat: torch.Tensor, layout: tuple[int, ...]) -> None:
        self._flat[index], self._layout[index] = flat, layout
        for position in layout:
            self._owner[position] = index

    def _spill(self, indices: Collection[int] | None = None) -> None:
        """Moves the flat residuals of ``indices`` (default: all buckets) into per-parameter pieces."""
        for index in list(self._flat) if indices is None else indices:
            flat, layout, offset = self._flat.pop(index), self._layout.pop(index), 0
            for position in layout:
                size = self._sizes[position]
                self._loose[position] = flat[offset:offset + size]
                self._owner.pop(position, None)
                offset += size

    def state_dict(self) -> dict[int, torch.Tensor]:
        """Residuals per parameter position, on the CPU."""
        self._spill()
        return {position: piece.detach().cpu().clone() for position, piece in self._loose.items()}

    def load_state_dict(self, state: dict[int, torch.Tensor]) -> None:
        """Replaces all residuals with per-parameter ones from :meth:`state_dict`."""
        self._flat.clear()
        self._layout.clear()
        self._owner.clear()
        self._loose = {int(position): piece.clone() for position, piece in state.items()}
        for position, piece in self._loose.items():
            self._sizes[position] = piece.numel()
