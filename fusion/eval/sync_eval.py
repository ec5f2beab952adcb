"""Evaluation of a sync checkpoint on held-out clips with seeded offsets, beside the cross-correlation baseline.

    python evaluate.py run=checkpoints/sync/<run> [data.video_dir=...] [out_dir=...]

The data settings come from the run's config.yaml (or the checkpoint's data_spec), overridden by ``data.*``.
The test split and the injected offsets (constant in [-K, K] and linear drift, ``data.eval_seed``) are fixed,
so two evaluations of one checkpoint give the same numbers. Writes ``metrics.json`` (offset_mae_ms,
within_40ms, within_window for constant offsets; drift/*, frame/*, baseline/*, and by true offset size
by_offset/<lo>-<hi>/*; posterior/* for the per-frame posterior-mean path, which follows drift between whole
frames), ``sync_windows.csv`` (every window) and ``sync_clips.csv`` (constant-offset error per
clip, worst first).
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
from fusion.temporal.metrics import clip_offsets, offset_errors, sync_report

log = logging.getLogger(__name__)

SPEC_DATA_KEYS = ("max_offset", "window", "sample_rate", "n_mels", "subframes", "crop_size", "mouth", "mouth_box",
                  "tracker")
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
    """Viterbi paths, posterior-mean paths, truths, drift flags, baseline estimates and clip indices of every
    window in ``loader``."""
    parts: dict[str, list] = {"paths": [], "posterior": [], "truth": [], "drift": [], "baseline": [], "clip": []}
    for batch in loader:
        video, audio, mask = batch["video"].to(device), batch["audio"].to(device), batch["frame_mask"].to(device)
        emissions = model.emissions(video, audio, mask)
        parts["paths"].append(model.decode(video, audio, mask, emissions=emissions).cpu())
        parts["posterior"].append(model.posterior_offsets(emissions, mask).cpu())
        steps = batch["video"].shape[1]
        flat_audio = batch["audio"].reshape(batch["audio"].shape[0], steps * subframes, -1)
        parts["baseline"].append(torch.tensor([estimate_offset_xcorr(v, a, subframes, max_offset)
                                               for v, a in zip(batch["video"], flat_audio, strict=True)]))
        parts["truth"].append(batch["offset"])
        parts["drift"].append(batch["drift"])
        parts["clip"].append(batch["clip"])
    return {k: torch.cat(v) for k, v in parts.items()}


OFFSET_SIZES = ((0, 3), (4, 7), (8, 11), (12, 15))  # |offset| in frames


def clip_breakdown(outputs: dict[str, torch.Tensor], names: list[str], fps: float) -> list[dict]:
    """Constant-offset error per clip: rows {clip, windows, offset_mae_ms, within_40ms, worst_error_ms}.

    Args:
        outputs: from :func:`predict_windows` (paths (N, T), truth (N, T), drift (N,), clip (N,)).
        names: clip names indexed by ``outputs["clip"]``.
    """
    constant = ~outputs["drift"].bool()
    error = (clip_offsets(outputs["paths"]) - outputs["truth"].nanmean(1)).abs() * 1000.0 / fps  # (N,) ms
    rows = []
    for index in sorted(set(outputs["clip"][constant].tolist())):
        pick = constant & (outputs["clip"] == index)
        rows.append({"clip": names[index], "windows": int(pick.sum()), "offset_mae_ms": round(float(error[pick].mean()), 1),
                     "within_40ms": round(float((error[pick] <= 1000.0 / fps + 1e-3).float().mean()), 3),
                     "worst_error_ms": round(float(error[pick].max()), 1)})
    return rows


def offset_size_breakdown(outputs: dict[str, torch.Tensor], fps: float) -> dict[str, float]:
    """Constant-offset clip estimates grouped by the true |offset|: ``by_offset/<lo>-<hi>/<metric>``."""
    constant = ~outputs["drift"].bool()
    truth = outputs["truth"].nanmean(1)  # (N,)
    estimate = clip_offsets(outputs["paths"])
    metrics = {}
    for lo, hi in OFFSET_SIZES:
        pick = constant & (truth.abs() >= lo) & (truth.abs() <= hi)
        if pick.any():
            metrics |= offset_errors(estimate[pick], truth[pick], fps, f"by_offset/{lo:02d}-{hi:02d}/")
    return metrics


def posterior_metrics(outputs: dict[str, torch.Tensor], fps: float) -> dict[str, float]:
    """Per-frame metrics of the posterior-mean path (fractional offsets): ``posterior/frame/*`` (constant
    windows) and ``posterior/drift/*``, ``posterior/drift_heard/*`` (drift windows)."""
    report = sync_report(outputs["posterior"], outputs["truth"], outputs["drift"], outputs["baseline"], fps)
    return {f"posterior/{k}": v for k, v in report.items() if k.split("/")[0] in ("frame", "drift", "drift_heard")}


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
    metrics |= posterior_metrics(outputs, fps)
    metrics |= offset_size_breakdown(outputs, fps)

    names = [c["name"] for c in datamodule.splits["test"]]
    per_clip = clip_breakdown(outputs, names, fps)
    with open(out_dir / "sync_clips.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(per_clip[0]))
        writer.writeheader()
        writer.writerows(sorted(per_clip, key=lambda row: -row["offset_mae_ms"]))
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
