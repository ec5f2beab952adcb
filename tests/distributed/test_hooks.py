"""Hook-specific behaviour in two gloo processes: top-k's exact k and residual, top-k against a plain-tensor
oracle (density warm-up, per-tensor top-k, several buckets), PowerSGD with a 0-d parameter. What every hook must do is in test_contract.py; the int8 hook's own checks are in test_int8.py.

One spawn runs every scenario (``run_scenarios``) and saves what each rank saw; the tests below check it.
"""

import math

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from fusion.distributed.registry import make_comm_hook
from tests.distributed.common import make_model, make_optimizer, reduced_mean, train, wrap
from tests.helpers.spawn import rank_results

WORLD = 2
TOPK_RATIO = 0.05
# oracle scenarios: label -> (hook, options, DDP bucket_cap_mb, steps, {step: density} of the density warm-up);
# fp64 values, so what is sent and what stays add up exactly
ORACLE = {
    # several buckets (re-sliced after DDP's rebuild), per-tensor top-k, a density warm-up of two stages
    "topk_tensor": ("topk", {"ratio": TOPK_RATIO, "warmup_steps": 2, "value_dtype": "fp64", "granularity": "tensor",
                             "density_warmup_steps": 2}, 0.001, 6, {2: 0.25, 3: 0.0625}),
}
PLAIN_TOPK = {"ratio": TOPK_RATIO, "warmup_steps": 1, "density_warmup_steps": 0}


def scenario_recorded(rank: int, name: str, args: dict, dtype: torch.dtype, steps: int = 4,
                      bucket_cap_mb: float | None = None) -> dict:
    """Runs a recorded hook; adds the exact average and what each rank sent (input + old - new residual)."""
    ddp, state, recorder = wrap(name, args, dtype=dtype, bucket_cap_mb=bucket_cap_mb, record=True)
    train(ddp, make_optimizer(ddp), rank, range(steps))
    for call in recorder.calls:
        corrected = call["input"].to(dtype) + (call["old"] if call["old"] is not None else 0)
        call["exact"] = reduced_mean(call["input"].double())
        sent = corrected - call["new"] if call["new"] is not None else None
        call["sent_mean"] = reduced_mean(sent.double()) if sent is not None else None
        call["sent"] = sent
        call["corrected"] = corrected
    return {"calls": recorder.calls, "summary": state.counter.summary(), "step": state.step}


class ScaledModel(nn.Module):
    """A model with a 0-d parameter (like the clip recipe's logit scale)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_model()
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


def scenario_scalar_parameter(rank: int) -> dict:
    """PowerSGD (torch reshapes every gradient by shape[0]) on a model with a 0-d parameter."""
    plain, hooked = DDP(ScaledModel()), DDP(ScaledModel())
    state, hook = make_comm_hook("powersgd", hooked.module, None, {"warmup_steps": 2})
    hooked.register_comm_hook(state, hook)
    return {"plain": train(plain, make_optimizer(plain), rank, range(4)),
            "hooked": train(hooked, make_optimizer(hooked), rank, range(4))}


def run_scenarios(rank: int, world: int, out_dir: str) -> None:
    results = {
        "topk": scenario_recorded(rank, "topk", {**PLAIN_TOPK, "value_dtype": "fp64"}, torch.float64),
        "topk_fp16": scenario_recorded(rank, "topk", {**PLAIN_TOPK, "warmup_steps": 0}, torch.float32),
        **{label: scenario_recorded(rank, name, args, torch.float64, steps=steps, bucket_cap_mb=cap)
           for label, (name, args, cap, steps, _) in ORACLE.items()},
        "scalar": scenario_scalar_parameter(rank),
    }
    torch.save(results, f"{out_dir}/{rank}.pt")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    return rank_results(run_scenarios, WORLD, str(tmp_path_factory.mktemp("hooks")), timeout=240)


def test_topk_sends_exactly_k_per_rank_and_keeps_the_rest(results):
    for rank_result in results:
        calls = rank_result["topk"]["calls"]
        warmup = [c for c in calls if c["step"] == 0]
        assert warmup and all(torch.allclose(c["output"], c["exact"], rtol=1e-12, atol=0) for c in warmup)
        sparse = [c for c in calls if c["step"] > 0]
        assert sparse
        for call in sparse:
            numel = call["input"].numel()
            k = max(1, -(-int(TOPK_RATIO * numel * 1e6) // 1_000_000))
            sent_mask = call["sent"] != 0
            assert int(sent_mask.sum()) == k
            assert torch.equal(call["new"][~sent_mask], call["corrected"][~sent_mask])  # the rest stays
            assert torch.all(call["new"][sent_mask] == 0)
            assert call["corrected"][sent_mask].abs().min() >= call["corrected"][~sent_mask].abs().max()
            assert torch.allclose(call["output"], call["sent_mean"], rtol=1e-12, atol=1e-15)
        summary = rank_result["topk"]["summary"]
        # one all-gather of k (fp64 value, int32 index) pairs against a ring all-reduce of N fp32 values
        assert summary["compressed_compression"] == pytest.approx(
            2 * (WORLD - 1) / WORLD * 4 * numel / ((WORLD - 1) * k * 12), rel=1e-6)


def test_topk_fp16_values_keep_their_rounding_error(results):
    for rank_result in results:
        for call in [c for c in rank_result["topk_fp16"]["calls"] if c["new"] is not None]:
            assert torch.equal(call["sent"] + call["new"], call["corrected"])
            sent = call["sent"][call["sent"] != 0]
            assert torch.equal(sent, sent.half().float())  # exactly representable in fp16
        assert rank_result["topk_fp16"]["summary"]["compressed_compression"] > 0.9 / TOPK_RATIO * 8 / 6 / WORLD


def test_powersgd_handles_zero_dim_parameters(results):
    for rank_result in results:
        run = rank_result["scalar"]
        # compressed steps (2, 3) differ in the matrices, but a 1-element gradient is all-reduced exactly
        assert torch.equal(run["hooked"][2][-1], run["plain"][2][-1])  # step 2 is compressed
        assert all(torch.isfinite(g).all() for step in run["hooked"] for g in step)


def topk_mask(accumulated: torch.Tensor, sizes: list[int], args: dict, density: float) -> tuple[torch.Tensor, int]:
    """(N,) bool of the ``ceil(density * n)`` largest ``|accumulated|`` of the bucket (or of each tensor), and k."""
    groups = sizes if args.get("granularity") == "tensor" else [accumulated.numel()]
    mask = torch.zeros(accumulated.numel(), dtype=torch.bool)
    offset, k = 0, 0
    for size in groups:
        count = min(size, max(1, math.ceil(density * size)))
        order = torch.argsort(accumulated[offset:offset + size].abs(), descending=True)
        mask[offset + order[:count]] = True
        offset, k = offset + size, k + count
    return mask, k


def topk_oracle(calls: list[dict], args: dict, densities: dict[int, float]) -> None:
    """Top-k with error feedback in plain tensor code, over one rank's calls in order.

    Per parameter, with g its gradient: dense step: send g; sparse step: r <- r + g, send the k largest |r| (per
    bucket or per tensor) and zero r there. Adds ``oracle_sent``, ``oracle_residual`` (N,), ``oracle_mask`` (N,)
    bool and ``oracle_k``.
    """
    residual: dict[int, torch.Tensor] = {}
    for call in calls:
        positions, sizes = call["positions"], call["sizes"]
        d = call["input"].double()  # (N,)
        if call["step"] < args["warmup_steps"]:
            call["oracle_sent"], call["oracle_residual"], call["oracle_k"] = d, None, None
            continue
        accumulated = torch.cat([residual.get(p, torch.zeros(n, dtype=torch.float64))
                                 for p, n in zip(positions, sizes, strict=True)]) + d  # (N,)
        mask, k = topk_mask(accumulated, sizes, args, densities.get(call["step"], args["ratio"]))
        call["oracle_sent"], call["oracle_mask"], call["oracle_k"] = torch.where(mask, accumulated, 0.0), mask, k
        call["oracle_residual"] = torch.where(mask, 0.0, accumulated)
        for position, r in zip(positions, call["oracle_residual"].split(sizes), strict=True):
            residual[position] = r


def calls_and_oracle_averages(per_rank: list[list[dict]]):
    """Yields (call, mean over ranks of what the oracle says each rank sent (N,)) for every recorded call."""
    for rank_calls in zip(*per_rank, strict=True):  # the same bucket of the same step on every rank
        assert len({(c["step"], c["positions"]) for c in rank_calls}) == 1
        average = sum(c["oracle_sent"] for c in rank_calls) / WORLD  # (N,)
        for call in rank_calls:
            yield call, average


@pytest.mark.parametrize("label", list(ORACLE))
def test_exchange_matches_oracle(results, label):
    _, args, _, steps, densities = ORACLE[label]
    per_rank = [rank_result[label]["calls"] for rank_result in results]
    for calls in per_rank:
        topk_oracle(calls, args, densities)
    sparse_steps = set()
    for call, average in calls_and_oracle_averages(per_rank):
        torch.testing.assert_close(call["output"], average, rtol=1e-10, atol=1e-12)
        if call["oracle_k"] is None:  # dense: everything went out, nothing was kept back
            assert call["new"] is None
            continue
        sparse_steps.add(call["step"])
        torch.testing.assert_close(call["new"], call["oracle_residual"], rtol=1e-10, atol=1e-12)
        assert int(call["oracle_mask"].sum()) == call["oracle_k"]  # exactly k values per rank (per tensor)
        assert torch.all(call["new"][call["oracle_mask"]] == 0) and torch.any(call["new"] != 0)
    assert sparse_steps == set(range(args["warmup_steps"], steps))
    if densities:  # several buckets; k per step falls through the density warm-up's stages to the ratio
        assert len({c["positions"] for c in per_rank[0] if c["step"] == steps - 1}) > 1
        sent = [sum(c["oracle_k"] for c in per_rank[0] if c["step"] == step) for step in sorted(sparse_steps)]
        assert sent[0] > sent[1] > sent[2] == sent[-1]
