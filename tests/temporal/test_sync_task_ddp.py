"""SyncTask under DDP: validation/test reports are over every process's windows, identical on every process."""

import json

import pytest
import torch

from fusion.tasks.sync import SyncTask
from fusion.temporal.metrics import sync_report
from tests.helpers.spawn import run_gloo

SPEC = {"max_offset": 3, "subframes": 4, "n_mels": 8, "crop_size": 16, "fps": 25.0}


def windows(rank: int) -> dict:
    """Rank 0 holds 3 windows, rank 1 holds 2 (the shards of one split); per-frame offsets in frames."""
    generator = torch.Generator().manual_seed(rank)
    n = 3 - rank
    truth = torch.randint(-3, 4, (n, 6), generator=generator).float()  # (n, T)
    paths = truth + torch.randint(-1, 2, (n, 6), generator=generator).float()
    paths[:, -1] = float("nan")  # padding
    return {"paths": paths, "truth": truth, "drift": torch.tensor([True, False, True][:n]),
            "baseline": torch.randint(-3, 4, (n,), generator=generator).float()}


def report_on_rank(rank: int, world: int, out_dir: str) -> None:
    task = SyncTask(SPEC, hidden_dim=4, embed_dim=4)
    task._outputs.append(windows(rank))
    task.epoch_means["val"].add("val/loss", torch.tensor(1.0 + rank), 3 - rank)
    logged = {}
    task.log_dict = lambda values, **kwargs: logged.update(values)
    task._eval_epoch_end("val")
    with open(f"{out_dir}/{rank}.json", "w") as handle:
        json.dump(logged, handle)


def test_report_covers_every_process_windows(tmp_path):
    run_gloo(report_on_rank, 2, str(tmp_path), timeout=90)
    logged = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert logged[0] == logged[1]
    whole = {k: torch.cat([windows(0)[k], windows(1)[k]]) for k in windows(0)}
    expected = sync_report(whole["paths"], whole["truth"], whole["drift"], whole["baseline"], SPEC["fps"])
    for key, value in expected.items():
        assert logged[0][f"val/{key}"] == pytest.approx(value, rel=1e-12, nan_ok=True)
    assert logged[0]["val/loss"] == (1.0 * 3 + 2.0 * 2) / 5
    single = sync_report(windows(0)["paths"], windows(0)["truth"], windows(0)["drift"], windows(0)["baseline"],
                         SPEC["fps"])
    assert any(single[key] != expected[key] for key in expected)  # one shard alone would report other numbers
