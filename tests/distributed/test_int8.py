"""The int8 hook in 8 gloo processes: its output against the exact mean and against the former shared-scale
int8 all-reduce (``127 // W`` levels), a plain-tensor oracle of the scheme (fp64, several buckets), error
feedback under a repeated gradient, and bytes on the wire against what the collectives really send. Its
block plan is also checked at 512 ranks, without processes.

One spawn runs every scenario and saves what each rank saw; the tests below check it.
"""

import math

import pytest
import torch
import torch.distributed as dist

from fusion.distributed.block_plan import BlockPlan
from fusion.distributed.int8 import LEVELS, Int8State
from tests.distributed.common import loss_of, make_model, wrap
from tests.helpers.spawn import rank_results

WORLD, BLOCK = 8, 32


def counting_collectives(sent: list[int]) -> None:
    """Makes the two collectives of the hook add the bytes this rank really sends to ``sent``."""
    all_to_all, all_gather = dist.all_to_all_single, dist.all_gather_into_tensor

    def counted_all_to_all(output, input, output_split_sizes=None, input_split_sizes=None, **kwargs):
        own = input_split_sizes[dist.get_rank()] * input.element_size()  # the row this rank addresses to itself
        sent.append(input.numel() * input.element_size() - own)
        return all_to_all(output, input, output_split_sizes, input_split_sizes, **kwargs)

    def counted_all_gather(output, input, **kwargs):
        sent.append((dist.get_world_size() - 1) * input.numel() * input.element_size())  # ring: W - 1 hops
        return all_gather(output, input, **kwargs)

    dist.all_to_all_single, dist.all_gather_into_tensor = counted_all_to_all, counted_all_gather


def scenario(rank: int, dtype: torch.dtype, steps: int, repeat: bool, bucket_cap_mb: float | None = None,
             poison: tuple[int, int] | None = None) -> dict:
    """``steps`` recorded steps; ``repeat``: the same batch and weights (lr 0) every step, so the same gradient;
    ``poison``: (rank, step) at which that rank's gradient of the first weight gets a row of inf (the step is
    then skipped)."""
    ddp, state, recorder = wrap("int8", {"block_size": BLOCK}, dtype=dtype, bucket_cap_mb=bucket_cap_mb,
                                record=True)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.0 if repeat else 0.05)
    poisoned = {"now": False}
    next(ddp.module.parameters()).register_hook(
        lambda grad: grad.index_fill(0, torch.tensor([0]), float("inf")) if poisoned["now"] else grad)
    for step in range(steps):
        poisoned["now"] = (rank, step) == poison
        optimizer.zero_grad()
        loss_of(ddp, rank, 0 if repeat else step).backward()
        if poison is None or poison[1] != step:  # skipping it is what an AMP grad scaler does
            optimizer.step()
    return {"calls": recorder.calls, "total_bytes": state.counter.total_bytes,
            "summary": state.counter.summary()}


def run_scenarios(rank: int, world: int, out_dir: str) -> None:
    sent: list[int] = []
    counting_collectives(sent)
    results = {"fp32": scenario(rank, torch.float32, steps=2, repeat=False)}
    results["sent_bytes"] = sum(sent)
    results["oracle"] = scenario(rank, torch.float64, steps=3, repeat=False, bucket_cap_mb=0.001)
    results["repeat"] = scenario(rank, torch.float64, steps=40, repeat=True)
    results["inf"] = scenario(rank, torch.float32, steps=3, repeat=False, bucket_cap_mb=0.001, poison=(3, 1))
    torch.save(results, f"{out_dir}/{rank}.pt")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    return rank_results(run_scenarios, WORLD, str(tmp_path_factory.mktemp("int8")), timeout=240)


def first_blocks() -> list[int]:
    """Number of each parameter's first block among all blocks of the model (the ownership rule's input)."""
    blocks = [math.ceil(p.numel() / BLOCK) for p in make_model().parameters()]
    return [sum(blocks[:i]) for i in range(len(blocks))]


def blocks_of(call: dict) -> list[tuple[int, int, int]]:
    """(start, length, owner) of every block of a recorded bucket: block b of the model is rank b % W's."""
    out, offset, firsts = [], 0, first_blocks()
    for size, position in zip(call["sizes"], call["positions"], strict=True):
        for k, start in enumerate(range(0, size, BLOCK)):
            out.append((offset + start, min(BLOCK, size - start), (firsts[position] + k) % WORLD))
        offset += size
    return out


def calls_by_bucket(results: list[dict], label: str) -> list[list[dict]]:
    """The same bucket of the same step on every rank, for every recorded call."""
    grouped = list(zip(*(r[label]["calls"] for r in results), strict=True))
    assert all(len({(c["step"], c["positions"]) for c in calls}) == 1 for calls in grouped)
    return grouped


def oracle(calls: list[dict]) -> dict:
    """The scheme in plain tensor code for one bucket of one step: every rank's corrected gradient rounded per
    block to 127 levels, averaged, the average rounded again per block; each rank keeps its own rounding error
    and the block's owner also W x the second one."""
    corrected = torch.stack([c["input"].double() + (c["old"] if c["old"] is not None else 0) for c in calls])
    output, residual = torch.zeros(corrected.shape[1], dtype=torch.float64), torch.zeros_like(corrected)
    for start, length, owner in blocks_of(calls[0]):
        part = corrected[:, start:start + length]  # (W, b)
        scale = (part.abs().amax(1, keepdim=True) / LEVELS).clamp(min=torch.finfo(torch.float64).tiny)  # (W, 1)
        sent = (part / scale).round() * scale  # (W, b)
        mean = sent.mean(0)  # (b,)
        second = (mean.abs().max() / LEVELS).clamp(min=torch.finfo(torch.float64).tiny)
        output[start:start + length] = (mean / second).round() * second
        residual[:, start:start + length] = part - sent
        residual[owner, start:start + length] += WORLD * (mean - output[start:start + length])
    return {"output": output, "residual": residual}


def shared_scale_output(calls: list[dict]) -> torch.Tensor:
    """The former scheme at step 0: per block, the largest |gradient| of all ranks shared, 127 // W levels."""
    inputs = torch.stack([c["input"].double() for c in calls])  # (W, N)
    levels, output = LEVELS // WORLD, torch.zeros(inputs.shape[1], dtype=torch.float64)
    for start, length, _ in blocks_of(calls[0]):
        part = inputs[:, start:start + length]
        scale = part.abs().max() / levels
        output[start:start + length] = ((part / scale).round() * scale).mean(0)
    return output


def test_int8_output_within_two_roundings_of_the_exact_mean_and_finer_than_shared_scales(results):
    new_errors, old_errors, magnitudes = [], [], []
    for calls in calls_by_bucket(results, "fp32"):
        if calls[0]["step"] != 0:
            continue
        assert all(c["old"] is None for c in calls)
        assert all(torch.equal(c["output"], calls[0]["output"]) for c in calls)  # the same on every rank
        inputs = torch.stack([c["input"].double() for c in calls])  # (W, N)
        exact = inputs.mean(0)
        error = (calls[0]["output"].double() - exact).abs()  # (N,)
        for start, length, _ in blocks_of(calls[0]):
            # each rank rounds to half a step of its own scale; the owner then rounds the average to half a step
            first = (inputs[:, start:start + length].abs().amax(1) / LEVELS).mean() / 2
            second = (exact[start:start + length].abs().max() + first) / LEVELS / 2
            assert error[start:start + length].max() <= (first + second) * (1 + 1e-5)
        new_errors.append(error)
        old_errors.append((shared_scale_output(calls) - exact).abs())
        magnitudes.append(exact.abs())
    new, old, magnitude = torch.cat(new_errors), torch.cat(old_errors), torch.cat(magnitudes)
    assert 0 < new.max() < 0.02 * magnitude.max()
    # 127 levels instead of 127 // 8 = 15: several times finer, at the largest and on average
    assert new.max() < old.max() / 3 and new.mean() < old.mean() / 3, (new.max(), old.max(), new.mean(), old.mean())


def test_int8_matches_plain_tensor_oracle_float64(results):
    grouped = calls_by_bucket(results, "oracle")
    assert len({c[0]["positions"] for c in grouped}) > 2  # several buckets (and DDP's rebuild)
    for calls in grouped:
        expected = oracle(calls)
        scale = expected["output"].abs().max() / LEVELS
        for rank, call in enumerate(calls):
            torch.testing.assert_close(call["output"], expected["output"], rtol=0, atol=1e-9 * scale)
            torch.testing.assert_close(call["new"], expected["residual"][rank], rtol=0, atol=1e-9 * scale * WORLD)
    assert any(c[0]["old"] is not None and c[0]["old"].abs().max() > 0 for c in grouped)  # residual carried


def in_parameter_order(call: dict, key: str) -> torch.Tensor:
    """``call[key]`` (N,) rearranged in ``module.parameters()`` order (DDP may reorder a rebuilt bucket)."""
    pieces = dict(zip(call["positions"], call[key].split(call["sizes"]), strict=True))
    return torch.cat([pieces[position] for position in sorted(pieces)])


def test_int8_error_feedback_mean_of_outputs_converges_to_exact_mean(results):
    grouped = calls_by_bucket(results, "repeat")
    assert [calls[0]["step"] for calls in grouped] == list(range(len(grouped)))  # one bucket per step
    steps = len(grouped)
    inputs = torch.stack([torch.stack([in_parameter_order(c, "input") for c in calls]) for calls in grouped])
    assert torch.equal(inputs, inputs[:1].expand_as(inputs))  # (T, W, N): the same gradients every step
    exact = inputs[0].mean(0)  # (N,)
    outputs = torch.stack([in_parameter_order(calls[0], "output") for calls in grouped])  # (T, N)
    errors = [(outputs[:t].mean(0) - exact).abs().max() for t in (1, 10, steps)]
    # what the T outputs missed is exactly the mean of the residuals the ranks hold: it shrinks as 1 / T
    held = torch.stack([in_parameter_order(c, "new") for c in grouped[-1]]).mean(0)  # (N,)
    torch.testing.assert_close(outputs.sum(0) - steps * exact, -held, rtol=0, atol=1e-12)
    assert errors[-1] < errors[0] / 10 and errors[-1] < errors[1] < errors[0], errors


def test_int8_inf_on_one_rank_gives_nan_bucket_on_every_rank(results):
    poisoned = 0
    for calls in calls_by_bucket(results, "inf"):
        holds_it = calls[0]["step"] == 1 and 0 in calls[0]["positions"]  # parameter 0, inf on rank 3
        poisoned += holds_it
        assert not holds_it or calls[0]["old"] is not None  # step 0 left a residual to keep
        for call in calls:
            assert call["output"].isnan().all() if holds_it else call["output"].isfinite().all()
            if holds_it and call["old"] is not None:
                assert torch.equal(call["new"], call["old"])  # the residual is not poisoned
            assert call["new"] is None or call["new"].isfinite().all()
    assert poisoned == 1


def test_int8_bytes_counted_are_the_bytes_sent(results):
    # every rank counts what the ranks really sent, on average (rows to owners differ a little in length)
    sent = sum(rank_result["sent_bytes"] for rank_result in results) / WORLD
    assert len({rank_result["sent_bytes"] for rank_result in results}) > 1
    for rank_result in results:
        assert rank_result["fp32"]["total_bytes"] == pytest.approx(sent, rel=1e-12)
        # one byte per value on each of the two legs, plus a 4-byte scale per 32-entry block
        assert 3.0 < rank_result["fp32"]["summary"]["compression"] < 4 / (1 + 4 / BLOCK)


@pytest.mark.parametrize("world, block", [(8, 512), (64, 512), (512, 64)])
def test_block_plan_shares_blocks_out_evenly_at_any_world_size(world, block):
    sizes = [1000 * 512 + 7, 300, 4096, 129 * 512]  # 580k entries: 17 blocks per rank at (64, 512) and (512, 64)
    blocks = [-(-n // block) for n in sizes]
    firsts = [sum(blocks[:i]) for i in range(len(blocks))]
    ranks = range(world) if world == 8 else [0, world - 1]
    plans = {rank: BlockPlan(sizes, firsts, block, world, rank, 4) for rank in ranks}
    if world == 8:  # every entry averaged by exactly one rank
        owned = torch.cat([plan.own_entries for plan in plans.values()])
        assert torch.equal(owned.sort().values, torch.arange(sum(sizes)))
    counts = plans[0].owner_numel
    assert sum(counts) == sum(sizes) and max(counts) - min(counts) <= 2 * block
    fp32 = 2 * (world - 1) / world * 4 * sum(sizes)  # ring all-reduce
    for rank, plan in plans.items():  # ~4x below fp32 (less the 4-byte scales), whatever the world size
        assert plan.own_numel == counts[rank] and plan.send_bytes == plans[0].send_bytes
        sent = (world - 1) / world * plan.send_bytes + (world - 1) * plan.gather_row
        assert fp32 / sent > 0.93 * 4 / (1 + 4 / block)


def test_state_takes_any_world_size(one_rank_group, monkeypatch):
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 512)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 300)
    state = Int8State(make_model(), block_size=16)
    assert state.world_size == 512 and state.rank == 300
    assert state.first_blocks == [0, 16, 18, 50, 51, 55]  # blocks of 16: 256 + 32 + 512 + 16 + 64 + 4 entries
