"""Communication hooks in two gloo processes: exactness, quantization bound, error feedback, top-k (with momentum
correction or local Adam), resume, inf.

One spawn runs every scenario (``run_scenarios``) and saves what each rank saw; the tests below check it.
"""

import io
import math

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from fusion.distributed.registry import make_comm_hook
from tests.distributed.spawn import run_gloo

WORLD = 2
TOPK_RATIO = 0.05
# selection="normalized" scenarios: label -> (hook args, DDP bucket_cap_mb); fp64 values, two dense warm-up steps
NORMALIZED = {
    "topk_normalized": ({"ratio": TOPK_RATIO, "warmup_steps": 2, "value_dtype": "fp64",
                         "selection": "normalized"}, None),
    # several buckets, per-tensor top-k, and an eps near the gradients' size (bias correction changes the ranking)
    "topk_normalized_tensor": ({"ratio": TOPK_RATIO, "warmup_steps": 2, "value_dtype": "fp64",
                                "selection": "normalized", "granularity": "tensor", "selection_beta": 0.9,
                                "selection_eps": 0.05}, 0.001),
}
# momentum-correction scenarios: label -> (hook args, DDP bucket_cap_mb, steps, {step: density} of the density
# warm-up); fp64 values, so the residual of a sent entry is exactly 0
MOMENTUM = {
    "topk_momentum": ({"ratio": TOPK_RATIO, "warmup_steps": 1, "value_dtype": "fp64", "momentum": 0.9}, None, 4, {}),
    # several buckets (re-sliced after DDP's rebuild), per-tensor top-k, a density warm-up of two stages
    "topk_momentum_tensor": ({"ratio": TOPK_RATIO, "warmup_steps": 2, "value_dtype": "fp64", "momentum": 0.8,
                              "granularity": "tensor", "density_warmup_steps": 2}, 0.001, 6, {2: 0.25, 3: 0.0625}),
    # without momentum factor masking: sent entries keep their velocity
    "topk_momentum_unmasked": ({"ratio": TOPK_RATIO, "warmup_steps": 1, "value_dtype": "fp64", "momentum": 0.9,
                                "momentum_masking": False}, None, 4, {}),
}
# local-Adam scenarios: label -> (hook args, DDP bucket_cap_mb, steps, {step: density}); fp64 values
LOCAL_ADAM = {
    "topk_local_adam": ({"ratio": TOPK_RATIO, "warmup_steps": 1, "value_dtype": "fp64", "local_adam": True},
                        None, 4, {}),
    # several buckets, per-tensor top-k, a density warm-up of two stages, other betas and eps
    "topk_local_adam_tensor": ({"ratio": TOPK_RATIO, "warmup_steps": 2, "value_dtype": "fp64", "local_adam": True,
                                "granularity": "tensor", "density_warmup_steps": 2, "adam_beta1": 0.8,
                                "adam_beta2": 0.95, "adam_eps": 1e-3}, 0.001, 6, {2: 0.25, 3: 0.0625}),
}
# scale_by_lr with local Adam: a decaying learning rate per step, set on the hook state and the SGD optimizer
SCALED_BY_LR = {"ratio": TOPK_RATIO, "warmup_steps": 1, "value_dtype": "fp64", "local_adam": True,
                "scale_by_lr": True}
LEARNING_RATES = [0.05, 0.04, 0.02, 0.01, 0.005]
# label -> (hook, args) of the inf scenario (rank 0 poisons step 2)
INF_CASES = {
    "int8": ("int8", {}),
    "topk": ("topk", {"ratio": 0.1}),
    "topk_normalized": ("topk", {"ratio": 0.1, "warmup_steps": 1, "selection": "normalized"}),
    "topk_normalized_dense": ("topk", {"ratio": 0.1, "warmup_steps": 3, "selection": "normalized"}),  # step 2 dense
    "topk_momentum": ("topk", {"ratio": 0.1, "warmup_steps": 1, "momentum": 0.9}),
    "topk_momentum_dense": ("topk", {"ratio": 0.1, "warmup_steps": 3, "momentum": 0.9}),  # step 2 dense
    "topk_local_adam": ("topk", {"ratio": 0.1, "warmup_steps": 1, "local_adam": True}),
    "topk_local_adam_dense": ("topk", {"ratio": 0.1, "warmup_steps": 3, "local_adam": True}),  # step 2 dense
    "fp16": ("fp16", {}),
    "powersgd": ("powersgd", {"warmup_steps": 2}),
}


def make_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)


def loss_of(model: nn.Module, rank: int, step: int, micro: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(10_000 * step + 100 * micro + rank)
    dtype = next(model.parameters()).dtype
    x = torch.randn(6, 8, generator=generator).to(dtype)  # (B, 8)
    y = torch.randn(6, 4, generator=generator).to(dtype)  # (B, 4)
    return ((model(x) - y) ** 2).mean() * (1.0 + step)


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def recording(hook):
    """Wraps a hook; per call keeps the bucket input, the residual before and after, and the result.

    For top-k with ``selection="normalized"`` also the stored squared-gradient means and bias-correction
    weights after the call (``mean_new`` (N,), ``weight_new`` (P,)); with ``momentum`` the velocity before and
    after (``velocity_old``, ``velocity_new``, (N,)); with ``local_adam`` both moments before and after
    (``adam_old``, ``adam_new``: [m, v], each (N,) or None).
    """
    calls: list[dict] = []

    def clone_or_none(tensor):
        return None if tensor is None else tensor.clone()

    def recorded_hook(state, bucket):
        entry = {"step": state.step, "input": bucket.buffer().detach().clone(),
                 "old": clone_or_none(state.residuals.get(bucket)),
                 "sizes": [p.numel() for p in bucket.parameters()], "positions": state.residuals.layout(bucket)}
        moments = getattr(state, "squared_means", None)
        if moments is not None:
            entry["mean_old"] = clone_or_none(moments.means.get(bucket))
        velocities = getattr(state, "velocities", None)
        if velocities is not None:
            entry["velocity_old"] = clone_or_none(velocities.get(bucket))
        adam_moments = getattr(state, "adam_moments", None)
        if adam_moments is not None:
            entry["adam_old"] = [clone_or_none(moment.means.get(bucket)) for moment in adam_moments]
        calls.append(entry)

        def keep(future):
            entry["output"] = future.value().detach().clone()
            entry["new"] = clone_or_none(state.residuals.get(bucket))
            if moments is not None:
                entry["mean_new"] = clone_or_none(moments.means.get(bucket))
                entry["weight_new"] = clone_or_none(moments.weights.get(bucket))
            if velocities is not None:
                entry["velocity_new"] = clone_or_none(velocities.get(bucket))
            if adam_moments is not None:
                entry["adam_new"] = [clone_or_none(moment.means.get(bucket)) for moment in adam_moments]
            return future.value()

        return hook(state, bucket).then(keep)

    recorded_hook.calls = calls
    return recorded_hook


def wrap(name: str, args: dict | None = None, dtype=torch.float32, bucket_cap_mb: float | None = None,
         record: bool = False):
    module = make_model(dtype)
    ddp = DDP(module, bucket_cap_mb=bucket_cap_mb) if bucket_cap_mb else DDP(module)
    state, hook = make_comm_hook(name, module, None, args)
    if record:
        hook = recording(hook)
    ddp.register_comm_hook(state, hook)
    return ddp, state, hook


def train(ddp: DDP, optimizer, rank: int, steps: range) -> list[list[torch.Tensor]]:
    seen = []
    for step in steps:
        optimizer.zero_grad()
        loss_of(ddp, rank, step).backward()
        seen.append(grads(ddp.module))
        optimizer.step()
    return seen


def make_optimizer(ddp: DDP) -> torch.optim.Optimizer:
    return torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)


def reduced_mean(tensor: torch.Tensor) -> torch.Tensor:
    out = tensor.clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def scenario_exact(rank: int) -> dict:
    """fp32 all-reduce through the hook path vs DDP's built-in all-reduce, several small buckets."""
    plain = DDP(make_model(), bucket_cap_mb=0.001)
    hooked, state, _ = wrap("allreduce", bucket_cap_mb=0.001)
    plain_grads = train(plain, make_optimizer(plain), rank, range(3))
    hooked_grads = train(hooked, make_optimizer(hooked), rank, range(3))
    return {"plain": plain_grads, "hooked": hooked_grads, "summary": state.counter.summary()}


def scenario_recorded(rank: int, name: str, args: dict, dtype: torch.dtype, steps: int = 4,
                      bucket_cap_mb: float | None = None) -> dict:
    """Runs a recorded hook; adds the exact average and the per-tensor agreed maxima of each bucket."""
    ddp, state, recorder = wrap(name, args, dtype=dtype, bucket_cap_mb=bucket_cap_mb, record=True)
    train(ddp, make_optimizer(ddp), rank, range(steps))
    for call in recorder.calls:
        corrected = call["input"].to(dtype) + (call["old"] if call["old"] is not None else 0)
        call["exact"] = reduced_mean(call["input"].double())
        block = args.get("block_size", 512)
        groups = ([piece for size in call["sizes"] for piece in [block] * (size // block) + [size % block] if piece]
                  if name == "int8" and args.get("granularity", "block") == "block" else call["sizes"])
        call["groups"] = groups
        agreed = torch.stack([piece.abs().max() for piece in corrected.split(groups)])
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
        call["agreed_max"] = agreed
        sent = corrected - call["new"] if call["new"] is not None else None
        call["sent_mean"] = reduced_mean(sent.double()) if sent is not None else None
        call["sent"] = sent
        call["corrected"] = corrected
    return {"calls": recorder.calls, "summary": state.counter.summary(), "step": state.step}


def scenario_resume(rank: int, name: str, args: dict, bucket_cap_mb: float | None) -> dict:
    """Uninterrupted 5 steps vs 3 steps, checkpoint (model, optimizer, hook state), fresh processes' objects, 2 steps."""
    ddp, _, _ = wrap(name, args, bucket_cap_mb=bucket_cap_mb)
    uninterrupted = train(ddp, make_optimizer(ddp), rank, range(5))

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
    resumed = train(ddp, optimizer, rank, range(3, 5))
    return {"uninterrupted": uninterrupted[3:], "resumed": resumed}


def scenario_dense_momentum(rank: int) -> dict:
    """Plain DDP + SGD with momentum 0.9 vs top-k with momentum correction, still dense, + SGD without momentum."""
    plain = DDP(make_model(torch.float64))
    hooked, _, _ = wrap("topk", {"warmup_steps": 100, "momentum": 0.9}, dtype=torch.float64)
    train(plain, torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9), rank, range(4))
    train(hooked, torch.optim.SGD(hooked.parameters(), lr=0.05), rank, range(4))
    return {"plain": [p.detach().clone() for p in plain.module.parameters()],
            "hooked": [p.detach().clone() for p in hooked.module.parameters()]}


def scenario_adam_equals_adamw(rank: int) -> dict:
    """The same data on both ranks, float64: plain DDP + AdamW vs top-k with ``local_adam`` + SGD without
    momentum (weight decay as SGD's), once dense and once sparse with every entry sent (ratio 1)."""
    def run(ddp: DDP, optimizer) -> list[torch.Tensor]:
        for step in range(5):
            optimizer.zero_grad()
            loss_of(ddp, 0, step).backward()  # rank 0's batch everywhere: the local gradient is the average
            optimizer.step()
        return [p.detach().clone() for p in ddp.module.parameters()]

    plain = DDP(make_model(torch.float64))
    params = {"plain": run(plain, torch.optim.AdamW(plain.parameters(), lr=0.01, weight_decay=0.1))}
    for label, args in [("dense", {"warmup_steps": 100}), ("sparse", {"ratio": 1.0, "value_dtype": "fp64"})]:
        hooked, _, _ = wrap("topk", {**args, "local_adam": True}, dtype=torch.float64)
        params[label] = run(hooked, torch.optim.SGD(hooked.parameters(), lr=0.01, weight_decay=0.1))
    return params


def scenario_scaled_by_lr(rank: int) -> dict:
    """Recorded top-k with ``SCALED_BY_LR``: each step's learning rate goes to the hook and to plain SGD."""
    ddp, state, recorder = wrap("topk", SCALED_BY_LR, dtype=torch.float64, record=True)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=1.0)
    for step, rate in enumerate(LEARNING_RATES):
        state.learning_rate = rate
        for group in optimizer.param_groups:
            group["lr"] = rate
        optimizer.zero_grad()
        loss_of(ddp, rank, step).backward()
        optimizer.step()
    return {"calls": recorder.calls}


def scenario_inf(rank: int, name: str, args: dict) -> dict:
    """Rank 0 gets an inf in one gradient entry at step 2; returns the reduced gradients and residuals."""
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
        "exact": scenario_exact(rank),
        "int8": scenario_recorded(rank, "int8", {"granularity": "tensor"}, torch.float32),
        "int8_f64": scenario_recorded(rank, "int8", {"granularity": "tensor"}, torch.float64),
        "int8_block_f64": scenario_recorded(rank, "int8", {"block_size": 16}, torch.float64),
        "int8_bucket_f64": scenario_recorded(rank, "int8", {"granularity": "bucket"}, torch.float64),
        "topk": scenario_recorded(rank, "topk", {"ratio": TOPK_RATIO, "warmup_steps": 1, "value_dtype": "fp64"},
                                  torch.float64),
        "topk_fp16": scenario_recorded(rank, "topk", {"ratio": TOPK_RATIO}, torch.float32),
        **{label: scenario_recorded(rank, "topk", args, torch.float64, steps=6, bucket_cap_mb=cap)
           for label, (args, cap) in NORMALIZED.items()},
        **{label: scenario_recorded(rank, "topk", args, torch.float64, steps=steps, bucket_cap_mb=cap)
           for label, (args, cap, steps, _) in MOMENTUM.items()},
        "topk_momentum_zero": scenario_recorded(rank, "topk", {"ratio": TOPK_RATIO, "warmup_steps": 1,
                                                               "value_dtype": "fp64", "momentum": 0.0},
                                                torch.float64),
        "dense_momentum": scenario_dense_momentum(rank),
        **{label: scenario_recorded(rank, "topk", args, torch.float64, steps=steps, bucket_cap_mb=cap)
           for label, (args, cap, steps, _) in LOCAL_ADAM.items()},
        "adam_equals_adamw": scenario_adam_equals_adamw(rank),
        "scaled_by_lr": scenario_scaled_by_lr(rank),
        "resume": {
            "int8": scenario_resume(rank, "int8", {"block_size": 64}, bucket_cap_mb=0.001),
            "topk": scenario_resume(rank, "topk", {"ratio": 0.1, "warmup_steps": 1}, None),  # one bucket
            "topk_tensor": scenario_resume(rank, "topk", {"ratio": 0.1, "warmup_steps": 1, "granularity": "tensor"},
                                           bucket_cap_mb=0.001),
            "topk_normalized": scenario_resume(rank, "topk", {"ratio": 0.1, "warmup_steps": 1,
                                                              "selection": "normalized"}, None),
            "topk_tensor_normalized": scenario_resume(rank, "topk", {"ratio": 0.1, "warmup_steps": 1,
                                                                     "granularity": "tensor",
                                                                     "selection": "normalized"},
                                                      bucket_cap_mb=0.001),
            "topk_momentum": scenario_resume(rank, "topk", {"ratio": 0.1, "warmup_steps": 1, "momentum": 0.9}, None),
            "topk_tensor_momentum": scenario_resume(rank, "topk", {"ratio": 0.1, "warmup_steps": 1, "momentum": 0.9,
                                                                   "granularity": "tensor"}, bucket_cap_mb=0.001),
            # saved inside the dense warm-up: the velocity carries over into the first sparse step (4)
            "topk_momentum_dense": scenario_resume(rank, "topk", {"ratio": 0.1, "warmup_steps": 4, "momentum": 0.9},
                                                   None),
            "topk_tensor_normalized_momentum": scenario_resume(
                rank, "topk", {"ratio": 0.1, "warmup_steps": 1, "momentum": 0.9, "granularity": "tensor",
                               "selection": "normalized"}, bucket_cap_mb=0.001),
            "topk_local_adam": scenario_resume(rank, "topk", {"ratio": 0.1, "warmup_steps": 1, "local_adam": True},
                                               None),
            # saved inside the dense warm-up; several buckets, per-tensor top-k
            "topk_tensor_local_adam_dense": scenario_resume(
                rank, "topk", {"ratio": 0.1, "warmup_steps": 4, "local_adam": True, "granularity": "tensor"},
                bucket_cap_mb=0.001),
            "powersgd": scenario_resume(rank, "powersgd", {"rank": 1, "warmup_steps": 2}, None),
        },
        "inf": {label: scenario_inf(rank, name, args) for label, (name, args) in INF_CASES.items()},
        "scalar": scenario_scalar_parameter(rank),
        "accumulation": {name: scenario_accumulation(rank, name, args) for name, args in
                         [("int8", {}), ("topk", {"warmup_steps": 1})]},
    }
    torch.save(results, f"{out_dir}/{rank}.pt")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("hooks")
    run_gloo(run_scenarios, WORLD, str(out_dir), timeout=240)
    return [torch.load(out_dir / f"{rank}.pt", weights_only=False) for rank in range(WORLD)]


def test_uncompressed_hook_path_equals_plain_allreduce_exactly(results):
    for rank_result in results:
        exact = rank_result["exact"]
        for plain_step, hooked_step in zip(exact["plain"], exact["hooked"], strict=True):
            for plain, hooked in zip(plain_step, hooked_step, strict=True):
                assert torch.equal(plain, hooked)
        assert exact["summary"]["compression"] == pytest.approx(1.0)


def test_int8_within_quantization_bound_of_exact_average(results):
    levels = 127 // WORLD
    for rank_result in results:
        first = [c for c in rank_result["int8"]["calls"] if c["step"] == 0]
        assert first and all(c["old"] is None for c in first)
        for call in first:  # no residual yet: every rank's rounding error is at most half a level
            scale = torch.repeat_interleave(call["agreed_max"] / levels, torch.tensor(call["sizes"]))
            error = (call["output"].double() - call["exact"]).abs()
            assert torch.all(error <= scale.double() / 2 * (1 + 1e-5) + 1e-7)
            relative = error.norm() / call["exact"].norm()
            assert relative < 0.03, relative
            assert relative > 0  # it did quantize
        # one byte per gradient plus one fp32 maximum per tensor (inf/NaN travel as an infinite maximum)
        numel = sum(c["input"].numel() for c in first)
        scale_bytes = sum(4 * len(c["sizes"]) for c in first)
        assert rank_result["int8"]["summary"]["compression"] == pytest.approx(4 * numel / (numel + scale_bytes))


def _lattice_checks(calls: list[dict], levels: int, granularity: str) -> None:
    for call in calls:
        sizes = call["groups"] if granularity != "bucket" else [sum(call["sizes"])]
        agreed = call["agreed_max"] if granularity != "bucket" else call["agreed_max"].max().reshape(1)
        scale = torch.repeat_interleave(agreed / levels, torch.tensor(sizes))  # (N,)
        units = call["sent"] / scale
        # what was sent lies on the shared lattice, and sent + new residual = gradient + old residual
        assert torch.allclose(units, units.round(), atol=1e-9, rtol=0)
        assert units.abs().max() <= levels + 1e-9
        assert torch.allclose(call["sent"] + call["new"], call["corrected"], rtol=0, atol=1e-15)
        # and the reduced gradient is exactly the average of what the ranks sent
        assert torch.allclose(call["output"], call["sent_mean"], rtol=1e-12, atol=1e-15)


def test_int8_error_feedback_invariant_float64(results):
    for rank_result in results:
        calls = rank_result["int8_f64"]["calls"]
        assert any(c["old"] is not None and c["old"].abs().max() > 0 for c in calls)  # residual is carried
        _lattice_checks(calls, 127 // WORLD, "tensor")
        _lattice_checks(rank_result["int8_bucket_f64"]["calls"], 127 // WORLD, "bucket")
        block_calls = rank_result["int8_block_f64"]["calls"]
        assert any(len(c["groups"]) > len(c["sizes"]) for c in block_calls)  # tensors were split into blocks
        _lattice_checks(block_calls, 127 // WORLD, "block")


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


def normalized_oracle(calls: list[dict], args: dict) -> None:
    """Recomputes here, per call, the moving average of squared gradients and the entries the criterion picks.

    Adds ``oracle_mean`` (N,), ``oracle_weight`` (P,), ``oracle_sent`` (N,) bool and ``magnitude_sent`` (N,) bool
    (what ``selection="magnitude"`` would send) to every call.
    """
    beta, eps = args.get("selection_beta", 0.99), args.get("selection_eps", 1e-8)
    mean: dict[int, torch.Tensor] = {}  # parameter position -> (numel,) running mean of squared gradients
    weight: dict[int, float] = {}  # parameter position -> 1 - beta ** updates
    for call in calls:  # in the order the hook ran
        positions = call["positions"]
        for position, grad in zip(positions, call["input"].double().split(call["sizes"]), strict=True):
            mean[position] = beta * mean.get(position, torch.zeros_like(grad)) + (1 - beta) * grad * grad
            weight[position] = beta * weight.get(position, 0.0) + (1 - beta)
        call["oracle_mean"] = torch.cat([mean[p] for p in positions])
        call["oracle_weight"] = torch.tensor([weight[p] for p in positions], dtype=torch.float64)
        rms = torch.cat([(mean[p] / weight[p]).sqrt() for p in positions])  # (N,) bias-corrected
        corrected = call["corrected"].double()
        for key, scores in [("oracle_sent", corrected.abs() / (rms + eps)), ("magnitude_sent", corrected.abs())]:
            groups = call["sizes"] if args.get("granularity") == "tensor" else [corrected.numel()]
            chosen = torch.zeros(corrected.numel(), dtype=torch.bool)
            offset = 0
            for size in groups:
                k = min(size, max(1, math.ceil(args["ratio"] * size)))
                order = torch.argsort(scores[offset:offset + size], descending=True)
                chosen[offset + order[:k]] = True
                offset += size
            call[key] = chosen


@pytest.mark.parametrize("label", list(NORMALIZED))
def test_topk_normalized_selection_matches_oracle_and_keeps_the_rest(results, label):
    args, _ = NORMALIZED[label]
    for rank_result in results:
        calls = rank_result[label]["calls"]
        normalized_oracle(calls, args)
        if args.get("granularity") == "tensor":
            assert len({c["positions"] for c in calls if c["step"] == 1}) > 1  # several buckets
        warmup = [c for c in calls if c["step"] < args["warmup_steps"]]
        sparse = [c for c in calls if c["step"] >= args["warmup_steps"]]
        assert warmup and sparse
        for call in warmup:  # dense steps, but the running mean is updated
            assert torch.allclose(call["output"], call["exact"], rtol=1e-12, atol=0)
        for call in calls:
            torch.testing.assert_close(call["mean_new"], call["oracle_mean"], rtol=1e-12, atol=0)
            torch.testing.assert_close(call["weight_new"], call["oracle_weight"], rtol=1e-12, atol=0)
        for call in sparse:
            sent_mask = call["sent"] != 0
            assert int(sent_mask.sum()) == int(call["oracle_sent"].sum())  # exactly k per rank (per tensor)
            assert torch.equal(sent_mask, call["oracle_sent"])  # the criterion's top-k, computed here
            # the float64 error-feedback invariant: raw corrected values sent, the rest stays, nothing lost
            assert torch.equal(call["sent"][sent_mask], call["corrected"][sent_mask])
            assert torch.equal(call["new"][~sent_mask], call["corrected"][~sent_mask])
            assert torch.all(call["new"][sent_mask] == 0)
            assert torch.equal(call["sent"] + call["new"], call["corrected"])
            assert torch.allclose(call["output"], call["sent_mean"], rtol=1e-12, atol=1e-15)
        # the criterion is not the magnitude ranking in disguise
        assert any(not torch.equal(c["oracle_sent"], c["magnitude_sent"]) for c in sparse)


@pytest.mark.parametrize("name", ["int8", "topk", "topk_tensor", "topk_normalized", "topk_tensor_normalized",
                                  "topk_momentum", "topk_tensor_momentum", "topk_momentum_dense",
                                  "topk_tensor_normalized_momentum", "topk_local_adam",
                                  "topk_tensor_local_adam_dense", "powersgd"])
def test_save_load_next_step_equals_uninterrupted(results, name):
    for rank_result in results:
        run = rank_result["resume"][name]
        for expected_step, resumed_step in zip(run["uninterrupted"], run["resumed"], strict=True):
            for expected, resumed in zip(expected_step, resumed_step, strict=True):
                assert torch.equal(expected, resumed)


@pytest.mark.parametrize("label", list(INF_CASES))
def test_inf_reaches_the_optimizer_step(results, label):
    for rank_result in results:
        run = rank_result["inf"][label]
        assert not all(torch.isfinite(g).all() for g in run["grads"][2])  # on both ranks
        assert all(torch.isfinite(g).all() for step in (0, 1, 3) for g in run["grads"][step])
        for call in run["calls"]:
            if call["step"] == 2 and call["old"] is not None and INF_CASES[label][0] in ("int8", "topk"):
                assert torch.equal(call["old"], call["new"])  # residual not poisoned
            if "velocity_new" in call:  # momentum correction: the velocity is not poisoned either
                assert call["velocity_new"] is not None and torch.isfinite(call["velocity_new"]).all()
                if call["step"] == 2:
                    assert torch.equal(call["velocity_old"], call["velocity_new"])
                else:
                    assert call["velocity_old"] is None or not torch.equal(call["velocity_old"], call["velocity_new"])
            if "adam_old" in call:  # local Adam: neither moment is poisoned, nor updated by the skipped step
                assert all(m is not None and torch.isfinite(m).all() for m in call["adam_new"])
                for old, new in zip(call["adam_old"], call["adam_new"], strict=True):
                    assert torch.equal(old, new) if call["step"] == 2 else old is None or not torch.equal(old, new)
            if "mean_old" in call:
                assert call["mean_new"] is not None and torch.isfinite(call["mean_new"]).all()
                if call["step"] == 2:  # the running mean of squared gradients is not updated either
                    assert torch.equal(call["mean_old"], call["mean_new"])
                else:
                    assert call["mean_old"] is None or not torch.equal(call["mean_old"], call["mean_new"])


@pytest.mark.parametrize("name", ["int8", "topk"])
def test_state_advances_once_per_optimizer_step_under_accumulation(results, name):
    for rank_result in results:
        run = rank_result["accumulation"][name]
        assert run["step"] == 3 and run["counted_steps"] == 3


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


def momentum_oracle(calls: list[dict], args: dict, densities: dict[int, float]) -> None:
    """Deep Gradient Compression with momentum correction in plain tensor code, over one rank's calls in order.

    Per parameter: u <- m u + g; dense step: send u; sparse step: r <- r + u, send the k largest |r| (per bucket
    or per tensor), then zero r and u (u only with masking) at the sent entries. Adds ``oracle_sent`` (N,) (what this rank contributes
    to the average), ``oracle_mask`` (N,) bool, ``oracle_k``, ``oracle_residual`` and ``oracle_velocity`` (N,).
    """
    momentum = args["momentum"]
    velocity: dict[int, torch.Tensor] = {}  # parameter position -> (numel,)
    residual: dict[int, torch.Tensor] = {}
    for call in calls:
        positions, sizes = call["positions"], call["sizes"]
        for position, grad in zip(positions, call["input"].double().split(sizes), strict=True):
            velocity[position] = momentum * velocity.get(position, torch.zeros_like(grad)) + grad
        u = torch.cat([velocity[p] for p in positions])  # (N,)
        if call["step"] < args["warmup_steps"]:
            call["oracle_sent"], call["oracle_mask"], call["oracle_k"] = u, torch.ones_like(u, dtype=torch.bool), None
            call["oracle_residual"], call["oracle_velocity"] = None, u
            continue
        accumulated = torch.cat([residual.get(p, torch.zeros(n, dtype=torch.float64))
                                 for p, n in zip(positions, sizes, strict=True)]) + u  # (N,)
        mask, k = topk_mask(accumulated, sizes, args, densities.get(call["step"], args["ratio"]))
        call["oracle_sent"] = torch.where(mask, accumulated, 0.0)
        call["oracle_mask"], call["oracle_k"] = mask, k
        call["oracle_residual"] = torch.where(mask, 0.0, accumulated)
        call["oracle_velocity"] = torch.where(mask, 0.0, u) if args.get("momentum_masking", True) else u
        for position, r, v in zip(positions, call["oracle_residual"].split(sizes),
                                  call["oracle_velocity"].split(sizes), strict=True):
            residual[position], velocity[position] = r, v


def calls_with_oracle(results: list[dict], label: str, scenarios: dict, oracle) -> tuple[dict, int, dict, list]:
    """(hook args, steps, density stages, each rank's recorded calls) of a scenario, the oracle applied."""
    args, _, steps, densities = scenarios[label]
    per_rank = [rank_result[label]["calls"] for rank_result in results]
    for calls in per_rank:
        oracle(calls, args, densities)
    return args, steps, densities, per_rank


def calls_and_oracle_averages(per_rank: list[list[dict]]):
    """Yields (call, mean over ranks of what the oracle says each rank sent (N,)) for every recorded call."""
    for rank_calls in zip(*per_rank, strict=True):  # the same bucket of the same step on every rank
        assert len({(c["step"], c["positions"]) for c in rank_calls}) == 1
        average = sum(c["oracle_sent"] for c in rank_calls) / WORLD  # (N,)
        for call in rank_calls:
            yield call, average


@pytest.mark.parametrize("label", list(MOMENTUM))
def test_topk_momentum_correction_matches_dgc_oracle(results, label):
    args, steps, densities, per_rank = calls_with_oracle(results, label, MOMENTUM, momentum_oracle)
    assert len(per_rank[0]) == len(per_rank[1])
    sparse_steps = set()
    for call, average in calls_and_oracle_averages(per_rank):
        torch.testing.assert_close(call["output"], average, rtol=1e-12, atol=1e-15)
        assert torch.equal(call["velocity_new"], call["oracle_velocity"])
        if call["oracle_k"] is None:  # dense: the velocity itself went out, nothing was kept back
            assert call["new"] is None
            continue
        sparse_steps.add(call["step"])
        assert torch.equal(call["new"], call["oracle_residual"])
        mask = call["oracle_mask"]
        assert int(mask.sum()) == call["oracle_k"]  # exactly k values per rank (per tensor)
        # momentum factor masking: the sent entries' residual and velocity are zero, the rest keeps u and r
        assert torch.all(call["new"][mask] == 0)
        masking = args.get("momentum_masking", True)
        assert torch.all(call["velocity_new"][mask] == 0) == masking
        assert torch.any(call["velocity_new"][~mask] != 0) and torch.any(call["new"][~mask] != 0)
        # error feedback in terms of u: what was sent + what is kept = old residual + m * old velocity + g
        old_velocity = call["velocity_old"] if call["velocity_old"] is not None else 0.0
        old_residual = call["old"] if call["old"] is not None else 0.0
        accumulated = old_residual + (old_velocity * args["momentum"] + call["input"])
        assert torch.equal(call["oracle_sent"] + call["new"], accumulated)
    assert sparse_steps == set(range(args["warmup_steps"], steps))
    # the velocity carried momentum into the sparse steps
    assert any(c["velocity_old"] is not None and c["velocity_old"].abs().max() > 0 for c in per_rank[0]
               if c["step"] >= args["warmup_steps"])
    if densities:  # several buckets; k per step falls through the density warm-up's stages to the ratio
        assert len({c["positions"] for c in per_rank[0] if c["step"] == steps - 1}) > 1
        sent = [sum(c["oracle_k"] for c in per_rank[0] if c["step"] == step) for step in sorted(sparse_steps)]
        assert sent[0] > sent[1] > sent[2] == sent[-1]


def test_topk_momentum_zero_is_the_plain_hook(results):
    for rank_result in results:
        plain, zero = rank_result["topk"]["calls"], rank_result["topk_momentum_zero"]["calls"]
        assert len(plain) == len(zero)
        for expected, got in zip(plain, zero, strict=True):
            assert "velocity_old" not in got  # no velocity is kept
            assert torch.equal(expected["output"], got["output"])
            assert (expected["new"] is None and got["new"] is None) or torch.equal(expected["new"], got["new"])


def test_topk_dense_momentum_with_sgd_equals_sgd_with_momentum(results):
    for rank_result in results:
        run = rank_result["dense_momentum"]
        for plain, hooked in zip(run["plain"], run["hooked"], strict=True):
            torch.testing.assert_close(hooked, plain, rtol=1e-12, atol=1e-14)


def local_adam_oracle(calls: list[dict], args: dict, densities: dict[int, float],
                      learning_rates: list[float] | None = None) -> None:
    """Top-k of local Adam directions with error feedback, in plain tensor code, over one rank's calls in order.

    Per parameter: m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2, d = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t))
    + eps) with t this parameter's update count; dense step: send d; sparse step: r <- r + d (r <- r + lr_t d with
    ``learning_rates``), send the k largest |r| and zero r there. Adds ``oracle_sent``, ``oracle_residual`` (N,),
    ``oracle_mask`` (N,) bool, ``oracle_k``.
    """
    beta1, beta2 = args.get("adam_beta1", 0.9), args.get("adam_beta2", 0.999)
    eps = args.get("adam_eps", 1e-8)
    first: dict[int, torch.Tensor] = {}  # parameter position -> (numel,)
    second: dict[int, torch.Tensor] = {}
    updates: dict[int, int] = {}
    residual: dict[int, torch.Tensor] = {}
    for call in calls:
        positions, sizes = call["positions"], call["sizes"]
        directions = []
        for position, grad in zip(positions, call["input"].double().split(sizes), strict=True):
            first[position] = beta1 * first.get(position, torch.zeros_like(grad)) + (1 - beta1) * grad
            second[position] = beta2 * second.get(position, torch.zeros_like(grad)) + (1 - beta2) * grad ** 2
            updates[position] = t = updates.get(position, 0) + 1
            directions.append(first[position] / (1 - beta1 ** t) / ((second[position] / (1 - beta2 ** t)).sqrt() + eps))
        d = torch.cat(directions)  # (N,)
        call["oracle_first"] = torch.cat([first[p] for p in positions])
        if call["step"] < args["warmup_steps"]:
            call["oracle_sent"], call["oracle_residual"], call["oracle_k"] = d, None, None
            continue
        rate = learning_rates[call["step"]] if learning_rates is not None else 1.0
        accumulated = torch.cat([residual.get(p, torch.zeros(n, dtype=torch.float64))
                                 for p, n in zip(positions, sizes, strict=True)]) + rate * d  # (N,)
        mask, k = topk_mask(accumulated, sizes, args, densities.get(call["step"], args["ratio"]))
        call["oracle_sent"], call["oracle_mask"], call["oracle_k"] = torch.where(mask, accumulated, 0.0), mask, k
        call["oracle_residual"] = torch.where(mask, 0.0, accumulated)
        for position, r in zip(positions, call["oracle_residual"].split(sizes), strict=True):
            residual[position] = r


@pytest.mark.parametrize("label", list(LOCAL_ADAM))
def test_topk_local_adam_matches_oracle(results, label):
    args, steps, _, per_rank = calls_with_oracle(results, label, LOCAL_ADAM, local_adam_oracle)
    sparse_steps = set()
    for call, average in calls_and_oracle_averages(per_rank):
        torch.testing.assert_close(call["output"], average, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(call["adam_new"][0], call["oracle_first"], rtol=1e-10, atol=1e-12)
        if call["oracle_k"] is None:  # dense: the whole direction went out, nothing was kept back
            assert call["new"] is None
            continue
        sparse_steps.add(call["step"])
        torch.testing.assert_close(call["new"], call["oracle_residual"], rtol=1e-10, atol=1e-12)
        assert int(call["oracle_mask"].sum()) == call["oracle_k"]  # exactly k values per rank (per tensor)
        assert torch.all(call["new"][call["oracle_mask"]] == 0) and torch.any(call["new"] != 0)
    assert sparse_steps == set(range(args["warmup_steps"], steps))
    if label == "topk_local_adam":  # what goes out is Adam's direction, not the gradient: at step 0 d = g / |g|
        first = next(c for c in per_rank[0] if c["step"] == 0)
        gradient, sent = first["input"].double(), first["oracle_sent"]
        large = gradient.abs() > 1e-5  # d = g / (|g| + eps): within 1e-3 of the sign where |g| > 1e-5
        assert gradient[large].abs().max() / gradient[large].abs().min() > 100
        torch.testing.assert_close(sent[large], gradient[large].sign(), rtol=1e-3, atol=0)


def test_topk_local_adam_with_sgd_equals_adamw(results):
    for rank_result in results:
        run = rank_result["adam_equals_adamw"]
        for label in ("dense", "sparse"):
            for plain, hooked in zip(run["plain"], run[label], strict=True):
                torch.testing.assert_close(hooked, plain, rtol=1e-10, atol=1e-12)
        start = make_model(torch.float64).parameters()
        assert not any(torch.equal(p, q) for p, q in zip(run["plain"], start, strict=True))  # it did train


def test_topk_scale_by_lr_keeps_parameter_changes(results):
    per_rank = [rank_result["scaled_by_lr"]["calls"] for rank_result in results]
    for calls in per_rank:
        local_adam_oracle(calls, SCALED_BY_LR, {}, LEARNING_RATES)
    for call, average in calls_and_oracle_averages(per_rank):
        rate = LEARNING_RATES[call["step"]]
        if call["oracle_k"] is None:  # dense warm-up: Adam directions, as without scale_by_lr
            torch.testing.assert_close(call["output"], average, rtol=1e-10, atol=1e-12)
            continue
        # the optimizer's lr * output is exactly the averaged parameter change that was sent
        torch.testing.assert_close(rate * call["output"], average, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(call["new"], call["oracle_residual"], rtol=1e-10, atol=1e-12)
    # what waits in the residual is in parameter units: at most the sum of lr_t * |d_t| (|d| about 1 here)
    last = per_rank[0][-1]
    assert 0 < last["new"].abs().max() < 3 * sum(LEARNING_RATES)
