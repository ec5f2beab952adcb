"""Who owns which scale block of a gradient bucket, and where every byte goes, for the int8 hook's all-to-all
reduce-scatter and all-gather (:mod:`fusion.distributed.int8`).

A block is a run of ``block_size`` consecutive entries of one gradient tensor (its last block may be shorter).
The blocks of all parameters of the module are numbered in ``module.parameters()`` order, and block ``b`` is
owned by rank ``b % W``: owners are dealt round robin, so every rank owns about ``N / W`` entries of a bucket
of ``N``, and a block's owner does not depend on how DDP groups parameters into buckets.

Rows exchanged (``S`` bytes per scale: 4 for fp32 work, 8 for fp64; rows padded to a multiple of ``S`` so
the scales are read in place):

- all-to-all, from every rank to owner ``j``: ``[scales of j's blocks (S b_j) | int8 values of j's entries
  (c_j) | non-finite flag (1) | pad]``;
- all-gather, from owner ``j``: ``[scales of j's blocks (S b_j) | int8 values (c_j) | pad]``, padded to the
  longest row of the bucket (at most about two blocks longer than the average one).
"""

import torch


def _exclusive_cumsum(counts: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(counts, 0) - counts


def _round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


class BlockPlan:
    """Index tensors of one bucket layout for one rank (built once per layout, kept on the bucket's device).

    Args:
        sizes: entries of each gradient in the bucket, in buffer order (summing to N).
        first_blocks: number of the first block of each of these gradients among all blocks of the module.
        block_size: entries per block.
        world_size: W, ranks in the process group.
        rank: this rank in the process group.
        scale_bytes: S, bytes of one scale.
        device: the bucket's device.
    """

    def __init__(self, sizes: list[int], first_blocks: list[int], block_size: int, world_size: int, rank: int,
                 scale_bytes: int, device: torch.device | str = "cpu") -> None:
        W, S = world_size, scale_bytes
        sizes_t = torch.tensor(sizes, dtype=torch.long)  # (P,)
        per_param = -(-sizes_t // block_size)  # (P,) blocks of each gradient
        param = torch.repeat_interleave(torch.arange(len(sizes)), per_param)  # (B,) gradient of each block
        within = torch.arange(param.numel()) - _exclusive_cumsum(per_param)[param]  # (B,) block within it
        start = _exclusive_cumsum(sizes_t)[param] + within * block_size  # (B,) first entry in the buffer
        length = torch.clamp(sizes_t[param] - within * block_size, max=block_size)  # (B,)
        owner = (torch.tensor(first_blocks, dtype=torch.long)[param] + within) % W  # (B,)
        self.numel, blocks = int(sizes_t.sum()), param.numel()

        # first rounding, every rank on the whole bucket: each block's entries and each entry's block
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), length.cumsum(0)])  # (B + 1,)
        self.block_of_entry = torch.repeat_interleave(torch.arange(blocks), length)  # (N,)

        # blocks and entries sorted by owner (buffer order within an owner)
        order = torch.sort(owner, stable=True).indices  # (B,)
        sorted_length, sorted_owner = length[order], owner[order]  # (B,)
        entry_by_owner = (torch.arange(self.numel)  # (N,) buffer position of the k-th entry in owner order
                          + torch.repeat_interleave(start[order] - _exclusive_cumsum(sorted_length), sorted_length))
        blocks_of = torch.bincount(owner, minlength=W)  # (W,) b_j
        entries_of = torch.zeros(W, dtype=torch.long).index_add_(0, owner, length)  # (W,) c_j
        block_at, entry_at = _exclusive_cumsum(blocks_of), _exclusive_cumsum(entries_of)  # (W,)
        self.owner_numel = entries_of.tolist()  # entries each rank owns

        # all-to-all send buffer: an index into cat([scale bytes (S B), int8 values (N), flag (1), zero (1)])
        flag, pieces, self.send_splits = S * blocks + self.numel, [], []
        for b, c, first_block, first_entry in zip(blocks_of.tolist(), entries_of.tolist(), block_at.tolist(),
                                                  entry_at.tolist(), strict=True):
            used = S * b + c + 1
            pieces += [(order[first_block:first_block + b, None] * S + torch.arange(S)).reshape(-1),
                       S * blocks + entry_by_owner[first_entry:first_entry + c], torch.tensor([flag]),
                       torch.full((_round_up(used, S) - used,), flag + 1)]
            self.send_splits.append(_round_up(used, S))
        self.send_index = torch.cat(pieces)  # (sum of send_splits,)
        self.send_bytes = sum(self.send_splits)  # the same on every rank
        self.recv_row = self.send_splits[rank]  # every rank sends this rank a row of this length
        self.recv_splits = [self.recv_row] * W

        # the blocks this rank owns: their entries in the buffer, and each entry's block among them
        self.own_blocks, self.own_numel = int(blocks_of[rank]), int(entries_of[rank])
        own_length = sorted_length[block_at[rank]:block_at[rank] + self.own_blocks]  # (b,)
        self.own_entries = entry_by_owner[entry_at[rank]:entry_at[rank] + self.own_numel]  # (c,)
        self.own_offsets = torch.cat([torch.zeros(1, dtype=torch.long), own_length.cumsum(0)])  # (b + 1,)
        self.own_block_of_entry = torch.repeat_interleave(torch.arange(self.own_blocks), own_length)  # (c,)

        # all-gather rows; where each entry's int8 value (a byte index) and scale (an index in units of S) arrive
        self.gather_row = _round_up(int((S * blocks_of + entries_of).max()), S)
        self.gather_pad = torch.zeros(self.gather_row - S * self.own_blocks - self.own_numel, dtype=torch.uint8)
        entry_owner = torch.repeat_interleave(torch.arange(W), entries_of)  # (N,) in owner order
        entry_in_row = torch.arange(self.numel) - entry_at[entry_owner]  # (N,)
        block_in_row = torch.repeat_interleave(torch.arange(blocks) - block_at[sorted_owner], sorted_length)  # (N,)
        self.value_index = torch.empty(self.numel, dtype=torch.long).index_put_(
            (entry_by_owner,), entry_owner * self.gather_row + S * blocks_of[entry_owner] + entry_in_row)
        self.scale_index = torch.empty(self.numel, dtype=torch.long).index_put_(
            (entry_by_owner,), entry_owner * (self.gather_row // S) + block_in_row)

        for name in ("offsets", "block_of_entry", "send_index", "own_entries", "own_offsets", "own_block_of_entry",
                     "gather_pad", "value_index", "scale_index"):
            setattr(self, name, getattr(self, name).to(device))

    def block_absmax(self, values: torch.Tensor) -> torch.Tensor:
        """(B,) largest |value| of every block of the bucket (N,); NaN if a block holds NaN, inf if it holds inf."""
        return torch.segment_reduce(values.abs(), "max", offsets=self.offsets, unsafe=True, initial=0.0)

    def own_absmax(self, values: torch.Tensor) -> torch.Tensor:
        """(b,) largest |value| of every owned block, from the owned entries (c,)."""
        return torch.segment_reduce(values.abs(), "max", offsets=self.own_offsets, unsafe=True, initial=0.0)
