"""Bytes each rank puts on the wire for a gradient collective, per optimizer step.

Costs follow the ring algorithms NCCL and gloo use for large messages, counted as bytes *sent by one
rank*: an all-reduce of ``S`` bytes sends ``2 (W - 1) / W * S``; an all-gather where each rank
contributes ``s`` bytes sends ``(W - 1) * s``; an all-to-all of ``S`` bytes per rank (its rows to all
ranks, its own included) sends ``(W - 1) / W * S``, the average over ranks (a rank keeps its own row, and
rows may differ in length), so every rank reports the same numbers. The reference is an fp32 all-reduce of the same gradient
buckets, so ``compression = fp32_bytes / sent_bytes``. Each collective is also counted, so a time model
``t = collectives * latency + bytes / bandwidth`` can be applied afterwards.
"""

from dataclasses import dataclass, field


def allreduce_wire_bytes(payload_bytes: int, world_size: int) -> float:
    """Bytes one rank sends in a ring all-reduce of ``payload_bytes``."""
    return 2.0 * (world_size - 1) / world_size * payload_bytes


def alltoall_wire_bytes(payload_bytes: int, world_size: int) -> float:
    """Bytes one rank sends, on average over ranks, in an all-to-all of ``payload_bytes`` per rank."""
    return (world_size - 1) / world_size * payload_bytes


def allgather_wire_bytes(bytes_per_rank: int, world_size: int) -> float:
    """Bytes one rank sends in a ring all-gather where every rank contributes ``bytes_per_rank``."""
    return float((world_size - 1) * bytes_per_rank)


@dataclass
class WireCounter:
    """Accumulates wire bytes over the buckets of one step and keeps per-step totals.

    Attributes:
        world_size: number of ranks in the process group.
        steps: number of finished (synchronising) steps.
        compressed_steps: finished steps in which the hook compressed (not warm-up / dense).
        total_bytes / total_fp32_bytes / total_collectives: sums over all finished steps.
        compressed_bytes / compressed_fp32_bytes: sums over compressed steps only.
        last_step_bytes / last_step_fp32_bytes / last_step_collectives: the most recent finished step.
    """

    world_size: int
    steps: int = 0
    compressed_steps: int = 0
    total_bytes: float = 0.0
    total_fp32_bytes: float = 0.0
    total_collectives: int = 0
    compressed_bytes: float = 0.0
    compressed_fp32_bytes: float = 0.0
    last_step_bytes: float = 0.0
    last_step_fp32_bytes: float = 0.0
    last_step_collectives: int = 0
    _bytes: float = field(default=0.0, repr=False)
    _fp32_bytes: float = field(default=0.0, repr=False)
    _collectives: int = field(default=0, repr=False)
    _compressed: bool = field(default=False, repr=False)

    def add_allreduce(self, payload_bytes: int) -> None:
        """Counts one all-reduce of ``payload_bytes`` (the tensor size on one rank)."""
        self._bytes += allreduce_wire_bytes(payload_bytes, self.world_size)
        self._collectives += 1

    def add_allgather(self, bytes_per_rank: int) -> None:
        """Counts one all-gather in which each rank contributes ``bytes_per_rank``."""
        self._bytes += allgather_wire_bytes(bytes_per_rank, self.world_size)
        self._collectives += 1

    def add_alltoall(self, payload_bytes: int) -> None:
        """Counts one all-to-all of ``payload_bytes`` (the send buffer on one rank, its own row included)."""
        self._bytes += alltoall_wire_bytes(payload_bytes, self.world_size)
        self._collectives += 1

    def add_bucket(self, numel: int, compressed: bool) -> None:
        """Adds the fp32 reference cost of a bucket of ``numel`` gradients to the current step."""
        self._fp32_bytes += allreduce_wire_bytes(4 * numel, self.world_size)
        self._compressed = self._compressed or compressed

    def end_step(self) -> None:
        """Closes the current step (called on the last bucket of a synchronising backward)."""
        self.steps += 1
        self.total_bytes += self._bytes
        self.total_fp32_bytes += self._fp32_bytes
        self.total_collectives += self._collectives
        if self._compressed:
            self.compressed_steps += 1
            self.compressed_bytes += self._bytes
            self.compressed_fp32_bytes += self._fp32_bytes
        self.last_step_bytes, self.last_step_fp32_bytes = self._bytes, self._fp32_bytes
        self.last_step_collectives = self._collectives
        self._bytes, self._fp32_bytes, self._collectives, self._compressed = 0.0, 0.0, 0, False

    @property
    def bytes_so_far(self) -> float:
        """Wire bytes counted so far, including the step in progress."""
        return self.total_bytes + self._bytes

    @property
    def collectives_so_far(self) -> int:
        """Collectives counted so far, including the step in progress."""
        return self.total_collectives + self._collectives

    def summary(self) -> dict[str, float]:
        """Flat metrics: bytes per step and compression against fp32, overall and for compressed steps."""

        def ratio(reference: float, sent: float) -> float:
            return reference / sent if sent > 0 else float("nan")

        steps = max(self.steps, 1)
        out = {
            "steps": float(self.steps),
            "bytes_per_step": self.total_bytes / steps,
            "fp32_bytes_per_step": self.total_fp32_bytes / steps,
            "collectives_per_step": self.total_collectives / steps,
            "compression": ratio(self.total_fp32_bytes, self.total_bytes),
        }
        if self.compressed_steps:
            out["compressed_bytes_per_step"] = self.compressed_bytes / self.compressed_steps
            out["compressed_compression"] = ratio(self.compressed_fp32_bytes, self.compressed_bytes)
        return out

    def state_dict(self) -> dict[str, float]:
        """Totals as plain numbers (saved in checkpoints so resumed runs keep counting)."""
        keys = ("steps", "compressed_steps", "total_bytes", "total_fp32_bytes", "total_collectives",
                "compressed_bytes", "compressed_fp32_bytes")
        return {key: getattr(self, key) for key in keys}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restores totals written by :meth:`state_dict`."""
        for key, value in state.items():
            setattr(self, key, type(getattr(self, key))(value))
