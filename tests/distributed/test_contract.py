"""One contract, looped over every hook of the registry, in two gloo processes (timm's test_models.py style).

For each ``comm_hook`` name: its dense or uncompressed mode equals DDP's own all-reduce exactly (where it has
one); a checkpoint of model, optimizer and hook state resumes exactly, and the hook state survives
``state_dict`` -> ``torch.save``/``load(weights_only=True)`` -> ``load_state_dict`` unchanged; bytes are
counted every optimizer step (once per step under gradient accumulation); an inf in one rank's gradient
reaches every rank's optimizer step while the hook's memory stays finite. A new hook needs a row in ``CASES``.
"""

import io
from dataclasses import dataclass

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from fusion.distributed.registry import HOOK_NAMES
from tests.distributed.common import grads, loss_of, make_model, make_optimizer, train, wrap
from tests.helpers.spawn import rank_results

WORLD, STEPS = 2, 5


@dataclass
class Case:
    """How the contract runs one hook."""

    args: dict  # options under which it compresses from step 2 at the latest
    dense: dict | None = None  # options of its dense/uncompressed mode (None: it has none)
    compression: float | None = None  # exact compression against fp32 (None: just > 1)
    bucket_cap_mb: float | None = None  # DDP buckets for the resume run (None: DDP's default, one bucket here)
    inf_dense: dict | None = None  # options under which the poisoned step 2 is still dense


CASES = {
    "allreduce": Case({}, dense={}, compression=1.0),
    "fp16": Case({}, compression=2.0),
    "bf16": Case({}, compression=2.0),
    "int8": Case({"block_size": 64}, bucket_cap_mb=0.001),
    "topk": Case({"ratio": 0.1, "warmup_steps": 1, "density_warmup_steps": 0}, dense={"warmup_steps": 100},
                 inf_dense={"ratio": 0.1, "warmup_steps": 3}),
    "powersgd": Case({"rank": 1, "warmup_steps": 2}, dense={"warmup_steps": 100}),
}
# further resume runs: label -> (hook, options, DDP bucket_cap_mb)
RESUME_VARIANTS = {
    # per-tensor top-k over several buckets (re-sliced after DDP's rebuild and after the restart)
    "topk_tensor": ("topk", {"ratio": 0.1, "warmup_steps": 1, "density_warmup_steps": 4, "granularity": "tensor"},
                    0.001),
}


def same_state(a, b) -> bool:
    """Deep equality of nested dicts/lists of tensors and numbers."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def scenario_dense(rank: int, name: str, args: dict) -> dict:
    """DDP's built-in all-reduce vs the hook in its dense mode, several small buckets, 3 steps."""
    plain = DDP(make_model(), bucket_cap_mb=0.001)
    hooked, _, _ = wrap(name, args, bucket_cap_mb=0.001)
    return {"plain": train(plain, make_optimizer(plain), rank, range(3)),
            "hooked": train(hooked, make_optimizer(hooked), rank, range(3))}


def scenario_resume(rank: int, name: str, args: dict, bucket_cap_mb: float | None) -> dict:
    """Uninterrupted STEPS steps vs 3 steps, checkpoint (model, optimizer, hook state), fresh objects, the rest."""
    ddp, state, _ = wrap(name, args, bucket_cap_mb=bucket_cap_mb)
    uninterrupted = train(ddp, make_optimizer(ddp), rank, range(STEPS))
    summary = state.counter.summary()

    ddp, state, _ = wrap(name, args, bucket_cap_mb=bucket_cap_mb)
    optimizer = make_optimizer(ddp)
    train(ddp, optimizer, rank, range(3))
    blob = io.BytesIO()
    torch.save({"model": ddp.module.state_dict(), "optimizer": optimizer.state_dict(),
                "hook": state.state_dict()}, blob)
    blob.seek(0)
    saved = torch.load(blob, weights_only=True)

    ddp, state, _ = wrap(name, args, bucket_cap_mb=bucket_cap_mb)
    ddp.module.load_state_dict(saved["model"])
    optimizer = make_optimizer(ddp)
    optimizer.load_state_dict(saved["optimizer"])
    state.load_state_dict(saved["hook"])
    round_trip = same_state(state.state_dict(), saved["hook"])
    resumed = train(ddp, optimizer, rank, range(3, STEPS))
    return {"uninterrupted": uninterrupted[3:], "resumed": resumed, "summary": summary, "round_trip": round_trip}


def scenario_inf(rank: int, name: str, args: dict) -> dict:
    """Rank 0 gets an inf in one gradient entry at step 2; returns the reduced gradients and the hook's memory."""
    ddp, state, recorder = wrap(name, args, record=True)
    first = next(ddp.module.parameters())
    poison = {"on": False}
    first.register_hook(lambda g: g.index_put((torch.tensor([0]), torch.tensor([0])), torch.tensor(float("inf")))
                        if poison["on"] and rank == 0 else g)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
    seen = []
    for step in range(4):
        poison["on"] = step == 2
        optimizer.zero_grad()
        loss_of(ddp, rank, step).backward()
        seen.append(grads(ddp.module))
        if step != 2:  # what an AMP grad scaler does with a non-finite step
            optimizer.step()
    return {"grads": seen, "calls": recorder.calls}


def scenario_accumulation(rank: int, name: str, args: dict) -> dict:
    """Three optimizer steps of three micro-batches each (two under no_sync)."""
    ddp, state, _ = wrap(name, args)
    optimizer = make_optimizer(ddp)
    for step in range(3):
        optimizer.zero_grad()
        for micro in range(3):
            if micro < 2:
                with ddp.no_sync():
                    loss_of(ddp, rank, step, micro).backward()
            else:
                loss_of(ddp, rank, step, micro).backward()
        optimizer.step()
    return {"step": state.step, "counted_steps": state.counter.steps}


def run_contract(rank: int, world: int, out_dir: str) -> None:
    results = {"dense": {}, "resume": {}, "inf": {}, "accumulation": {}}
    for name, case in CASES.items():
        if case.dense is not None:
            results["dense"][name] = scenario_dense(rank, name, case.dense)
        results["resume"][name] = scenario_resume(rank, name, case.args, case.bucket_cap_mb)
        results["inf"][name] = scenario_inf(rank, name, case.args)
        if case.inf_dense is not None:
            results["inf"][f"{name}_dense"] = scenario_inf(rank, name, case.inf_dense)
        results["accumulation"][name] = scenario_accumulation(rank, name, case.args)
    for label, (name, args, cap) in RESUME_VARIANTS.items():
        results["resume"][label] = scenario_resume(rank, name, args, cap)
    torch.save(results, f"{out_dir}/{rank}.pt")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    return rank_results(run_contract, WORLD, str(tmp_path_factory.mktemp("contract")), timeout=240)


def test_every_registered_hook_has_a_case():
    assert set(CASES) == set(HOOK_NAMES), f"give every registered hook a row in CASES: {sorted(HOOK_NAMES)}"


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.dense is not None])
def test_dense_mode_equals_plain_allreduce_exactly(results, name):
    for rank_result in results:
        run = rank_result["dense"][name]
        for plain_step, hooked_step in zip(run["plain"], run["hooked"], strict=True):
            for plain, hooked in zip(plain_step, hooked_step, strict=True):
                assert torch.equal(plain, hooked)


@pytest.mark.parametrize("label", [*CASES, *RESUME_VARIANTS])
def test_save_load_next_step_equals_uninterrupted(results, label):
    for rank_result in results:
        run = rank_result["resume"][label]
        assert run["round_trip"]  # load_state_dict(state_dict()) gives back the same state
        for expected_step, resumed_step in zip(run["uninterrupted"], run["resumed"], strict=True):
            for expected, resumed in zip(expected_step, resumed_step, strict=True):
                assert torch.equal(expected, resumed)


@pytest.mark.parametrize("name", list(CASES))
def test_bytes_are_counted_every_step(results, name):
    for rank_result in results:
        summary = rank_result["resume"][name]["summary"]
        assert summary["steps"] == STEPS and summary["bytes_per_step"] > 0
        assert summary["collectives_per_step"] >= 1
        expected = CASES[name].compression
        if expected is not None:
            assert summary["compression"] == pytest.approx(expected)
        else:
            assert summary["compressed_compression"] > 1.5


@pytest.mark.parametrize("name", list(CASES))
def test_state_advances_once_per_optimizer_step_under_accumulation(results, name):
    for rank_result in results:
        run = rank_result["accumulation"][name]
        assert run["step"] == 3 and run["counted_steps"] == 3


@pytest.mark.parametrize("label", [*CASES, *(f"{name}_dense" for name, case in CASES.items() if case.inf_dense)])
def test_inf_reaches_the_optimizer_step(results, label):
    for rank_result in results:
        run = rank_result["inf"][label]
        assert not all(torch.isfinite(g).all() for g in run["grads"][2])  # on both ranks
        assert all(torch.isfinite(g).all() for step in (0, 1, 3) for g in run["grads"][step])
        for call in run["calls"]:
            if call["step"] == 2 and call["old"] is not None:
                assert torch.equal(call["old"], call["new"])  # the residual is not poisoned
