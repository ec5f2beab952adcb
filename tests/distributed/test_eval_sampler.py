"""Evaluation under DDP counts every row of the split once: disjoint, unpadded shares per process."""

import os
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

from fusion.data.builtin_digits import ensure_builtin_digits
from fusion.data.distributed_eval_sampler import DistributedEvalSampler, with_eval_sampler
from tests.helpers.spawn import free_port, run_gloo

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
ROWS = 17  # val and test rows: 9 + 8 over two processes, i.e. 2 and 1 batches of 8


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("rows", [4, 5, 7, 17])
def test_shares_are_disjoint_unpadded_and_cover_the_split(world, rows):
    shares = [list(DistributedEvalSampler(range(rows), num_replicas=world, rank=rank)) for rank in range(world)]
    assert sorted(row for share in shares for row in share) == list(range(rows))  # each row exactly once
    assert [len(DistributedEvalSampler(range(rows), world, rank)) for rank in range(world)] == [len(s) for s in shares]
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_every_process_needs_a_row():
    with pytest.raises(ValueError, match="the evaluation split has 2 rows for 3 processes"):
        DistributedEvalSampler(range(2), num_replicas=3, rank=0)


def test_one_process_keeps_its_loader():
    loader = DataLoader(range(5), batch_size=2)
    assert with_eval_sampler(loader) is loader


def build(manifest: Path):
    """Data module and classification task of the progressive recipe on ``manifest`` (batches of 8)."""
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        cfg = compose("config", overrides=["recipe=progressive", f"data.manifest={manifest}", "data.batch_size=8"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    torch.manual_seed(0)
    return datamodule, instantiate(cfg.model, data_spec=datamodule.spec, _recursive_=False, _convert_="all")


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)


def ddp_worker(rank: int, world: int, out_dir: str, manifest: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0", "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world)})  # launched externally: Lightning joins our group
    datamodule, task = build(Path(manifest))
    trainer = quiet_trainer(strategy=DDPStrategy(), devices=world, max_epochs=1, limit_train_batches=2)
    trainer.fit(task, datamodule=datamodule)  # validation through DDP's forward, 2 batches here and 1 there
    metrics = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    sampler = trainer.test_dataloaders.sampler
    torch.save({"metrics": metrics, "rows": list(sampler), "sampler": type(sampler).__name__,
                "weights": task.state_dict()}, f"{out_dir}/{rank}.pt")


def test_ddp_test_metrics_equal_one_process_on_an_odd_split(tmp_path):
    manifest = ensure_builtin_digits(tmp_path / "digits", n_train=32, n_val=ROWS, n_test=ROWS)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    run_gloo(ddp_worker, 2, str(tmp_path), str(manifest), timeout=300)
    ranks = [torch.load(tmp_path / f"{rank}.pt", weights_only=False) for rank in range(2)]
    assert all(r["sampler"] == "DistributedEvalSampler" for r in ranks)  # Lightning kept it
    assert sorted(ranks[0]["rows"] + ranks[1]["rows"]) == list(range(ROWS))  # every test row once

    datamodule, task = build(manifest)
    task.load_state_dict(ranks[0]["weights"])
    single = quiet_trainer(devices=1).test(task, datamodule=datamodule, verbose=False)[0]
    for rank_result in ranks:
        metrics = rank_result["metrics"]
        assert metrics.keys() == single.keys()
        assert metrics["test/acc"] == single["test/acc"] and metrics["test/f1"] == single["test/f1"]
        for key, value in single.items():  # weighted sums over processes: the same up to summation order
            assert metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
