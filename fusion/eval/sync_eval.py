"""Evaluation of a sync checkpoint on held-out clips with seeded offsets, beside the cross-correlation baseline.

    python evaluate.py run=checkpoints/sync/<run> [data.video_dir=...] [out_dir=...]

The data settings come from the run's config.yaml (or the checkpoint's data_spec), overridden by ``data.*``.
The test split and the injected offsets (constant in [-K, K] and linear drift, ``data.eval_seed``) are fixed,
so two evaluations of one checkpoint give the same numbers. Writes ``metrics.json`` (offset_mae_ms,
within_40ms, within_window for constant offsets; drift/*, frame/*, baseline/*) and ``sync_windows.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import torch
import yaml

from fusion.data.sync_data import SyncDataModule
from fusion.errors import ConfigError
from fusion.eval.sync_estimate import load_sync_model
from fusion.files import atomic_write
from fusion.temporal.baseline import estimate_offset_xcorr
from fusion.temporal.metrics import clip_offsets, sync_report

log = logging.getLogger(__name__)

SPEC_DATA_KEYS = ("max_offset", "window", "sample_rate", "n_mels", "subframes", "crop_size", "mouth_box")
MODEL_FEATURE_KEYS = ("max_offset", "subframes", "n_mels", "crop_size")


def _get(cfg, key: str, default=None):
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def data_settings(run_dir: Path, spec: dict, overrides: dict) -> dict:
    """SyncDataModule arguments: the run's data config, else the checkpoint's data_spec, then ``overrides``."""
    settings: dict = {}
    config = run_dir / "config.yaml"
    if config.is_file():
        settings = dict((yaml.safe_load(config.read_text()) or {}).get("data") or {})
    if not settings:
        settings = {k: spec[k] for k in SPEC_DATA_KEYS if k in spec}
    settings.pop("_target_", None)
    settings.update({k: v for k, v in overrides.items() if v is not None or k == "max_clips"})
    return settings


@torch.no_grad()
def predict_windows(model, loader, device: str, max_offset: int, subframes: int) -> dict[str, torch.Tensor]:
    """Decoded paths, truths, drift flags, baseline estimates and clip indices of every window in ``loader``."""
    parts: dict[str, list] = {"paths": [], "truth": [], "drift": [], "baseline": [], "clip": []}
    for batch in loader:
        video, audio, mask = batch["video"].to(device), batch["audio"].to(device), batch["frame_mask"].to(device)
        parts["paths"].append(model.decode(video, audio, mask).cpu())
        steps = batch["video"].shape[1]
        flat_audio = batch["audio"].reshape(batch["audio"].shape[0], steps * subframes, -1)
        parts["baseline"].append(torch.tensor([estimate_offset_xcorr(v, a, subframes, max_offset)
                                               for v, a in zip(batch["video"], flat_audio, strict=True)]))
        parts["truth"].append(batch["offset"])
        parts["drift"].append(batch["drift"])
        parts["clip"].append(batch["clip"])
    return {k: torch.cat(v) for k, v in parts.items()}


def evaluate_sync(cfg) -> dict[str, float]:
    """Evaluates ``cfg.run`` on the test split; writes metrics.json and sync_windows.csv to the output folder.

    Args:
        cfg: mapping with ``run`` (run folder or .ckpt), optional ``data`` (overrides, e.g. video_dir),
            ``out_dir`` (default <run folder>/eval_sync), ``device`` (default cpu), ``threads``.

    Returns:
        The flat metrics.
    """
    ckpt = _get(cfg, "run")
    if not ckpt:
        raise ConfigError("sync evaluation needs run=<sync run folder or checkpoint file>")
    device = str(_get(cfg, "device", "cpu"))
    if _get(cfg, "threads"):
        torch.set_num_threads(int(_get(cfg, "threads")))
    model, spec, ckpt_path = load_sync_model(ckpt, device)
    run_dir = ckpt_path.parent
    overrides = dict(_get(cfg, "data", {}) or {})
    settings = data_settings(run_dir, spec, overrides)
    out_dir = Path(_get(cfg, "out_dir", run_dir / "eval_sync"))
    out_dir.mkdir(parents=True, exist_ok=True)

    datamodule = SyncDataModule(**settings)
    datamodule.prepare(out_dir)
    data_spec = datamodule.spec
    clash = {k: (spec[k], data_spec[k]) for k in MODEL_FEATURE_KEYS if spec.get(k) != data_spec.get(k)}
    if clash:
        raise ConfigError(f"data settings differ from the checkpoint '{ckpt_path}' (checkpoint, data): {clash}")

    max_offset, subframes, fps = spec["max_offset"], spec["subframes"], float(data_spec["fps"])
    outputs = predict_windows(model, datamodule.test_dataloader(), device, max_offset, subframes)
    metrics = sync_report(outputs["paths"], outputs["truth"], outputs["drift"], outputs["baseline"], fps)
    metrics["num_test_clips"] = float(len(datamodule.splits["test"]))

    names = [c["name"] for c in datamodule.splits["test"]]
    estimates = clip_offsets(outputs["paths"])
    with open(out_dir / "sync_windows.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip", "drift", "true_first", "true_last", "estimate_median", "estimate_first",
                         "estimate_last", "baseline"])
        for i in range(outputs["paths"].shape[0]):
            valid = outputs["paths"][i][~outputs["paths"][i].isnan()]
            writer.writerow([names[int(outputs["clip"][i])], int(outputs["drift"][i]),
                             f"{outputs['truth'][i, 0]:.2f}", f"{outputs['truth'][i, -1]:.2f}",
                             f"{estimates[i]:.1f}", f"{valid[0]:.0f}", f"{valid[-1]:.0f}",
                             int(outputs["baseline"][i])])
    with atomic_write(out_dir / "metrics.json") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    log.info("sync evaluation of %s on %d test clips -> %s", ckpt_path, len(names), out_dir / "metrics.json")
    for key in ("offset_mae_ms", "within_40ms", "within_window", "drift/offset_mae_ms", "drift/within_40ms",
                "baseline/offset_mae_ms", "baseline/within_40ms"):
        if key in metrics:
            log.info("  %s: %.4g", key, metrics[key])
    return metrics
