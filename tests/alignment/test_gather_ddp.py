"""Two gloo processes with the gathered loss give the loss and gradients of one process holding the batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from fusion.alignment.gather import all_gather_no_grad, all_gather_with_grad
from fusion.alignment.loss import TOTAL_KEY, ContrastiveLoss

MODALITIES = ("audio", "image", "text")
ROWS_PER_RANK = (6, 4)  # unequal on purpose: exercises the padding of the collective


def make_problem() -> tuple[nn.ModuleDict, ContrastiveLoss, dict, dict]:
    """Same towers, loss and global batch on every process (seeded)."""
    torch.manual_seed(0)
    towers = nn.ModuleDict({m: nn.Linear(5, 8) for m in MODALITIES})
    loss = ContrastiveLoss(init_temperature=0.3)
    n = sum(ROWS_PER_RANK)
    inputs = {m: torch.randn(n, 5) for m in MODALITIES}
    mask = {
        "audio": torch.tensor([1, 1, 0, 1, 1, 1, 1, 0, 1, 1], dtype=torch.bool),
        "text": torch.tensor([1, 1, 1, 1, 1, 0, 1, 1, 1, 0], dtype=torch.bool),
    }
    return towers, loss, inputs, mask


def run_step(towers, loss, inputs, mask, rows: slice) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    z = {m: F.normalize(towers[m](inputs[m][rows]), dim=-1) for m in MODALITIES}  # (B, 8)
    out = loss(z, {m: v[rows] for m, v in mask.items()})
    out[TOTAL_KEY].backward()
    params = dict(towers.named_parameters()) | {"logit_scale": loss.logit_scale}
    return out[TOTAL_KEY].detach(), {k: p.grad.clone() for k, p in params.items()}


def worker(rank: int, world: int, port: int, local_loss: bool, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        towers, loss, inputs, mask = make_problem()
        loss.local_loss = local_loss
        start = sum(ROWS_PER_RANK[:rank])
        value, grads = run_step(towers, loss, inputs, mask, slice(start, start + ROWS_PER_RANK[rank]))
        for g in grads.values():  # what DDP does: average gradients over ranks
            dist.all_reduce(g)
            g /= world
        gathered = all_gather_no_grad(torch.arange(ROWS_PER_RANK[rank]) + 100 * rank)
        x = torch.full((ROWS_PER_RANK[rank], 2), float(rank + 1), requires_grad=True)
        (all_gather_with_grad(x) * torch.arange(1.0, 11.0)[:, None]).sum().backward()
        torch.save(
            {"loss": value, "grads": grads, "gathered": gathered, "x_grad": x.grad}, f"{out_dir}/{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("local_loss", [False, True])
def test_two_process_gather_matches_single_process(tmp_path, local_loss):
    world = len(ROWS_PER_RANK)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(worker, args=(world, free_port(), local_loss, str(tmp_path)), nprocs=world, join=True)
    results = [torch.load(tmp_path / f"{r}.pt") for r in range(world)]

    towers, loss, inputs, mask = make_problem()
    expected_loss, expected_grads = run_step(towers, loss, inputs, mask, slice(None))

    rank_losses = torch.stack([r["loss"] for r in results])
    if local_loss:  # each rank returns its share; DDP's average of the shares is the global loss
        torch.testing.assert_close(rank_losses.mean(), expected_loss, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(rank_losses[0], rank_losses[1])
    else:
        for value in rank_losses:
            torch.testing.assert_close(value, expected_loss, rtol=1e-5, atol=1e-6)
    for r in results:
        assert r["grads"].keys() == expected_grads.keys()
        for name, grad in expected_grads.items():
            assert grad.abs().sum() > 0, name
            torch.testing.assert_close(r["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)

    # The raw collective: rows in rank order, gradient = sum over ranks of the gathered copies' grads.
    assert results[0]["gathered"].tolist() == [0, 1, 2, 3, 4, 5, 100, 101, 102, 103]
    weights = torch.arange(1.0, 11.0)[:, None].expand(10, 2)
    torch.testing.assert_close(results[0]["x_grad"], world * weights[:6])
    torch.testing.assert_close(results[1]["x_grad"], world * weights[6:])
