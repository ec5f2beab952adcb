"""train(cfg): the whole training run behind `python train.py recipe=...`."""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.environments import (
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch.strategies import ParallelStrategy
from omegaconf import DictConfig, OmegaConf, open_dict

from fusion.best_checkpoint import LatestOnTiesCheckpoint
from fusion.checkpoint_io import build_checkpoint_io
from fusion.checkpoints import check_resume_checkpoint, load_checkpoint_file, load_matching_weights
from fusion.faults import CollectiveTimeout, explain_peer_failures
from fusion.resume import ExactResumeCallback, make_train_loader_resumable
from fusion.tasks.cross_fit import (
    DECISIONS_FILE,
    assign_folds,
    collect_decisions,
    merge_decisions,
    write_fold_manifest,
)


def build_strategy(cfg: DictConfig):
    """The Trainer strategy: the user's choice, wrapped with a gradient-compression hook if comm_hook is set."""
    strategy = cfg.trainer.get("strategy", "auto")
    if str(cfg.get("comm_hook", "none")) == "none":
        return strategy
    from fusion.distributed.strategy import build_strategy as build_hooked_strategy

    args = cfg.get("comm_hook_args")
    args = OmegaConf.to_container(args, resolve=True) if args is not None else {}
    check_optimizer_for_hook(cfg, str(cfg.comm_hook), args)
    return build_hooked_strategy(str(cfg.comm_hook), args, strategy)


def check_optimizer_for_hook(cfg: DictConfig, hook: str, args: dict) -> None:
    """Top-k with momentum correction, local Adam or scale_by_lr sends finished update steps, which only plain SGD
    (no momentum) applies as they are; any other optimizer is refused with the settings to change."""
    options = [name for name, on in (("local_adam=true", args.get("local_adam") is True),
                                     (f"momentum={args.get('momentum')}", float(args.get("momentum", 0) or 0) > 0),
                                     ("scale_by_lr=true", args.get("scale_by_lr") is True)) if on]
    if hook != "topk" or not options:
        return
    option = options[0]
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if args.get("local_adam") is True and (accelerator in ("gpu", "cuda")
                                           or (accelerator == "auto" and torch.cuda.is_available())):
        raise ValueError("comm_hook_args.local_adam=true runs on the CPU (gloo) only for now: on CUDA (NCCL) it "
                         "reached NaN (BENCHMARKS.md, 'local_adam on CUDA'); use trainer.accelerator=cpu, or "
                         "top-k without local_adam on GPUs")
    optimizer, momentum = cfg.model.get("optimizer"), cfg.model.get("momentum")
    if optimizer != "sgd" or float(momentum or 0) != 0:
        raise ValueError(f"comm_hook=topk with comm_hook_args.{option} sends finished update steps, which the "
                         f"optimizer must apply as they are: set model.optimizer=sgd model.momentum=0 (now "
                         f"model.optimizer={optimizer}, model.momentum={momentum})")


def trainer_kwargs(cfg: DictConfig) -> dict:
    """Keyword arguments of lightning.Trainer from cfg.trainer, with the comm-hook strategy."""
    return OmegaConf.to_container(cfg.trainer, resolve=True) | {"strategy": build_strategy(cfg)}


# cluster environments in which Lightning does not start the processes itself (torchrun, srun, jsrun, mpirun)
EXTERNAL_LAUNCHERS = (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment)


def shared_run_dir(cfg: DictConfig) -> str:
    """Global rank 0's `cfg.run_dir`, on every process of a run.

    torchrun or srun start the processes of each node separately, and each node picks its own default run
    folder (Hydra's timestamp may differ by a second); processes that Lightning starts itself are given the
    parent's folder. With external launchers this joins the process group as Lightning's fit would
    (same environment, backend and timeout; fit then reuses the group) and takes rank 0's folder.
    """
    if not any(environment.detect() for environment in EXTERNAL_LAUNCHERS):
        return str(cfg.run_dir)
    device_info = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = device_info.level
    device_info.setLevel(logging.WARNING)  # the real Trainer reports the devices below
    try:
        probe = L.Trainer(**trainer_kwargs(cfg) | {"logger": False, "enable_checkpointing": False})
    finally:
        device_info.setLevel(level)
    strategy = probe.strategy
    if (probe.world_size <= 1 or not isinstance(strategy, ParallelStrategy)
            or not strategy.cluster_environment.creates_processes_externally):
        return str(cfg.run_dir)
    strategy.setup_environment()
    return strategy.broadcast(str(cfg.run_dir), src=0)


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list:
    best = LatestOnTiesCheckpoint(dirpath=run_dir, filename="best", monitor=cfg.monitor, mode=cfg.monitor_mode,
                           save_top_k=1, save_last=True, auto_insert_metric_name=False, enable_version_counter=False)
    callbacks = [best, ExactResumeCallback()]
    if cfg.get("checkpoint_every_n_steps"):
        # last.ckpt only (save_top_k=0): one write per N steps, not a second copy under another name
        callbacks.append(ModelCheckpoint(dirpath=run_dir, save_top_k=0, save_last=True,
                                         every_n_train_steps=int(cfg.checkpoint_every_n_steps),
                                         enable_version_counter=False))
    if cfg.get("ddp_timeout_s"):
        callbacks.append(CollectiveTimeout(float(cfg.ddp_timeout_s)))
    return callbacks


def log_version(cfg: DictConfig) -> str:
    """logs/metrics.csv for a new run; a resumed run logs beside it instead of overwriting it."""
    return time.strftime("resumed-%Y%m%d-%H%M%S") if cfg.get("ckpt_path") else ""


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def out_of_fold_decisions(cfg: DictConfig, run_dir: Path, datamodule) -> dict:
    """Trains one model per group fold of the train split (fusion/tasks/cross_fit.py) and returns the
    decisions each made on its held-out fold. A fold whose decisions are already saved is not trained again."""
    folds = int(cfg.cross_fit.folds)
    train_rows, val_rows = datamodule.datasets["train"].rows, datamodule.datasets["val"].rows
    fold_of = assign_folds(train_rows, folds, int(cfg.seed))
    device = "cuda" if torch.cuda.is_available() and str(cfg.trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda") else "cpu"
    parts = []
    for fold in range(folds):
        fold_dir = run_dir / "cross_fit" / f"fold{fold}"
        saved = fold_dir / DECISIONS_FILE
        if not saved.is_file():
            held_out = write_fold_manifest(fold_dir / "manifest.csv", train_rows, val_rows, fold_of, fold)
            print(f"[cross_fit] fold {fold + 1}/{folds}: {held_out} held-out train rows -> {fold_dir}")
            fold_cfg = copy.deepcopy(cfg)
            with open_dict(fold_cfg):
                fold_cfg.data.manifest = str(fold_dir / "manifest.csv")
                fold_cfg.data.on_error = "raise"  # rows were checked (and skipped, if asked) by the main run
                fold_cfg.run_dir, fold_cfg.ckpt_path, fold_cfg.cross_fit.folds = str(fold_dir), None, 0
            fold_data = instantiate(fold_cfg.data)
            fold_data.prepare(fold_dir)
            if fold_data.classes != datamodule.classes:
                raise ValueError(f"cross_fit fold {fold}: its classes {fold_data.classes} differ from the data's "
                                 f"{datamodule.classes}; every class needs train rows outside the test split")
            train(fold_cfg, fold_data)
            task = instantiate(cfg.model, data_spec=fold_data.spec, _recursive_=False, _convert_="all")
            task.load_state_dict(load_checkpoint_file(fold_dir / "best.ckpt")["state_dict"])
            decisions = collect_decisions(task.model.to(device), fold_data.test_dataloader(), device)
            torch.save(decisions, saved.with_suffix(".tmp"))
            os.replace(saved.with_suffix(".tmp"), saved)
        parts.append(torch.load(saved, weights_only=True))
    return merge_decisions(parts)


def train(cfg: DictConfig, datamodule=None) -> dict[str, float]:
    """Validates the data, builds the task, fits, tests the best checkpoint and writes the run folder.

    `datamodule`: an already prepared datamodule for `cfg.data` (default: built and validated here).

    Every process of a multi-process run uses global rank 0's `cfg.run_dir` (written back into `cfg`).

    Returns:
        Flat test metrics, e.g. {"test/acc": 0.97, "test/f1": 0.97}.
    """
    with open_dict(cfg):
        cfg.run_dir = shared_run_dir(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if datamodule is None:
        datamodule = instantiate(cfg.data)
        datamodule.prepare(run_dir)
    make_train_loader_resumable(datamodule, int(cfg.seed))
    task = instantiate(cfg.model, data_spec=datamodule.spec, _recursive_=False, _convert_="all")
    if cfg.get("init_from"):
        report = load_matching_weights(task, cfg.init_from)
        print(f"[init_from] loaded {len(report['loaded'])} tensors from {cfg.init_from}; "
              f"re-initialised {len(report['skipped_shape'])} with other shapes, {len(report['missing'])} not in it")
    if cfg.get("ckpt_path"):
        check_resume_checkpoint(task, cfg.ckpt_path)
    if int(cfg.get("cross_fit", {}).get("folds", 0) or 0):
        fusion = getattr(getattr(task, "model", None), "fusion", None)
        if not hasattr(task, "out_of_fold") or fusion is None or fusion.decision_gate_module() is None:
            raise ValueError("cross_fit.folds needs a classifier whose decision gate reads decisions alone: "
                             "recipe=progressive with model.fusion.decision_gate_inputs=confidence")
        task.out_of_fold = out_of_fold_decisions(cfg, run_dir, datamodule)
        task.out_of_fold_epochs, task.out_of_fold_lr = int(cfg.cross_fit.epochs), float(cfg.cross_fit.lr)
    trainer = L.Trainer(**trainer_kwargs(cfg), default_root_dir=str(run_dir), callbacks=build_callbacks(cfg, run_dir),
                        logger=CSVLogger(save_dir=str(run_dir), name="logs", version=log_version(cfg)),
                        plugins=[build_checkpoint_io(str(cfg.get("checkpoint_io", "async")))])
    if trainer.is_global_zero:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    start = time.perf_counter()
    with explain_peer_failures(trainer, run_dir):
        trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - start
    # bytes/compression of a comm hook, read before testing restores best.ckpt's (possibly older) hook state
    comm_summary = getattr(trainer.strategy, "comm_summary", dict)()
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    with explain_peer_failures(trainer, run_dir):
        results = trainer.test(task, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items() if k.startswith("test/")}
    metrics["fit_seconds"] = round(fit_seconds, 2)
    metrics.update(comm_summary)
    metrics.update(getattr(task, "out_of_fold_report", {}))
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics
