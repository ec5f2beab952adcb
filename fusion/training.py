"""train(cfg): the whole training run behind `python train.py recipe=...`: instantiate -> fit -> test."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from fusion.files import atomic_write
from fusion.runtime.checkpoints import build_checkpoint_io, check_resume_checkpoint, load_matching_weights
from fusion.runtime.faults import CollectiveTimeout, explain_peer_failures
from fusion.runtime.nodes import shared_run_dir
from fusion.runtime.resume import ExactResumeCallback, make_train_loader_resumable

log = logging.getLogger(__name__)


def trainer_kwargs(cfg: DictConfig) -> dict:
    """Keyword arguments of lightning.Trainer from cfg.trainer, with the comm-hook strategy of cfg.comm_hook."""
    from fusion.distributed.strategy import build_strategy

    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    hook = OmegaConf.to_container(cfg.comm_hook, resolve=True) if "comm_hook" in cfg else None
    return kwargs | {"strategy": build_strategy(hook, kwargs.get("strategy", "auto"))}


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The `callbacks/` group's callbacks, plus the runtime's own (exact resume, step checkpoints, DDP timeout)."""
    callbacks = [instantiate(spec) for spec in (cfg.get("callbacks") or {}).values() if spec is not None]
    callbacks.append(ExactResumeCallback())
    if cfg.get("checkpoint_every_n_steps"):
        from lightning.pytorch.callbacks import ModelCheckpoint

        # last.ckpt only (save_top_k=0): one write per N steps, not a second copy under another name
        callbacks.append(ModelCheckpoint(dirpath=cfg.run_dir, save_top_k=0, save_last=True,
                                         every_n_train_steps=int(cfg.checkpoint_every_n_steps),
                                         enable_version_counter=False))
    if cfg.get("ddp_timeout_s"):
        callbacks.append(CollectiveTimeout(float(cfg.ddp_timeout_s)))
    return callbacks


def build_logger(cfg: DictConfig):
    """The `logger/` group's logger; a resumed run logs into a new version folder beside the first."""
    spec = cfg.get("logger")
    if spec is None:
        return False
    overrides = {"version": time.strftime("resumed-%Y%m%d-%H%M%S")} if cfg.get("ckpt_path") and "version" in spec else {}
    return instantiate(spec, **overrides)


def build_task(cfg: DictConfig, datamodule) -> L.LightningModule:
    """The recipe's LightningModule for this data, with `init_from` weights copied in."""
    task = instantiate(cfg.model, data_spec=datamodule.spec, _recursive_=False, _convert_="all")
    if cfg.get("init_from"):
        report = load_matching_weights(task, cfg.init_from)
        log.info("init_from: loaded %d tensors from %s; re-initialised %d with other shapes, %d not in it",
                 len(report["loaded"]), cfg.init_from, len(report["skipped_shape"]), len(report["missing"]))
    return task


def train(cfg: DictConfig, datamodule=None) -> dict[str, float]:
    """Validates the data, builds the task, fits, tests the best checkpoint and writes the run folder.

    `datamodule`: an already prepared datamodule for `cfg.data` (default: built and validated here).
    Every process of a multi-process run uses global rank 0's `cfg.run_dir` (written back into `cfg`).

    Returns:
        Flat test metrics, e.g. {"test/acc": 0.97, "test/f1": 0.97}.
    """
    with open_dict(cfg):
        cfg.run_dir = shared_run_dir(str(cfg.run_dir), trainer_kwargs(cfg))
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if datamodule is None:
        datamodule = instantiate(cfg.data)
        datamodule.prepare(run_dir)
    make_train_loader_resumable(datamodule, int(cfg.seed))
    task = build_task(cfg, datamodule)
    if cfg.get("ckpt_path"):
        check_resume_checkpoint(task, cfg.ckpt_path)
    if int(cfg.get("cross_fit", {}).get("folds", 0) or 0):
        from fusion.tasks.cross_fit import attach_out_of_fold_decisions

        attach_out_of_fold_decisions(task, cfg, run_dir, datamodule, train)
    trainer = L.Trainer(**trainer_kwargs(cfg), default_root_dir=str(run_dir), callbacks=build_callbacks(cfg),
                        logger=build_logger(cfg), plugins=[build_checkpoint_io(str(cfg.get("checkpoint_io", "async")))])
    if trainer.is_global_zero:
        with atomic_write(run_dir / "config.yaml") as f:
            f.write(OmegaConf.to_yaml(cfg, resolve=True))
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
        with atomic_write(run_dir / "metrics.json") as f:
            json.dump(metrics, f, indent=2, sort_keys=True)
    return metrics
