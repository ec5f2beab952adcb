"""Collects the runs of ``benchmarks/alignment/gpu_protocol.sh`` into ``OUT/summary.json`` and prints the acceptance table.

    python benchmarks/alignment/gpu_summary.py OUT

Per data set: every retrieval direction (instance and class level R1/5/10, median ranks), matched vs
unmatched 768-d cosine per pair, zero-shot accuracies, the validation curve of the clip run, the
supervised audio-only baseline, and the fusion fine-tuning curves (val/acc per epoch, aligned vs scratch,
with the first epoch reaching 98 % of the best value either run reached). Missing runs are reported as
missing rather than failing the whole summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_curves import first_reaching, read_curve  # noqa: E402

BUILTIN_TARGET = 0.95  # audio->image class R1 on the built-in set
TEXT_IMAGE_TARGET = 0.99  # text->image class R1 on MNIST+FSDD
BASELINE_MARGIN = 0.02  # audio->image class R1 may trail the supervised audio-only accuracy by this much


def load_run(run: Path) -> dict | None:
    """metrics.json of a run folder with the ``test/`` prefix removed; None if the run did not finish."""
    path = run / "metrics.json"
    if not path.is_file():
        return None
    return {k.removeprefix("test/"): v for k, v in json.loads(path.read_text()).items()}


def epochs_run(run: Path) -> int | None:
    """Number of epochs with a validation result in the run's CSV log."""
    for metric in ("val/class_R1", "val/acc"):
        try:
            return len(read_curve(run, metric))
        except (FileNotFoundError, ValueError):
            continue
    return None


def clip_section(run: Path) -> dict:
    metrics = load_run(run)
    if metrics is None:
        return {"missing": str(run)}
    section = {"epochs_run": epochs_run(run), "fit_seconds": metrics.get("fit_seconds")}
    section["directions"] = {
        key: value for key, value in sorted(metrics.items()) if "_to_" in key and not key.startswith("mean/")
    }
    section["cosine_768d"] = {key: value for key, value in sorted(metrics.items()) if key.endswith("_cos")}
    section["zero_shot"] = {key: value for key, value in sorted(metrics.items()) if key.startswith("zero_shot")}
    section["mean"] = {key: value for key, value in sorted(metrics.items()) if key.startswith("mean/")}
    try:
        section["val_class_R1_per_epoch"] = read_curve(run, "val/class_R1")
    except (FileNotFoundError, ValueError):
        pass
    return section


def finetune_section(scratch: Path, aligned: Path, metric: str = "val/acc") -> dict:
    runs = {"scratch": scratch, "aligned": aligned}
    curves, out = {}, {}
    for name, run in runs.items():
        try:
            curves[name] = read_curve(run, metric)
        except (FileNotFoundError, ValueError) as err:
            out[name] = {"missing": str(err)}
    if not curves:
        return out
    target = 0.98 * max(v for c in curves.values() for v in c.values())
    out["metric"], out["target"] = metric, target
    for name, curve in curves.items():
        metrics = load_run(runs[name]) or {}
        out[name] = {
            "curve": curve,
            "first_epoch_reaching_target": first_reaching(curve, target),
            "test_acc": metrics.get("acc"),
        }
        try:
            out[name]["train_loss_per_epoch"] = read_curve(runs[name], "train/loss_epoch")
        except (FileNotFoundError, ValueError):
            pass
    return out


def acceptance(summary: dict) -> list[dict]:
    rows = []
    builtin = summary["builtin"]["clip"].get("directions", {})
    if "audio_to_image/class_R1" in builtin:
        value = builtin["audio_to_image/class_R1"]
        rows.append({"check": "built-in audio->image class R1 >= 0.95", "value": value,
                     "met": value >= BUILTIN_TARGET})
    real = summary["mnist_fsdd"]["clip"].get("directions", {})
    baseline = summary["mnist_fsdd"].get("audio_only_test_acc")
    if "audio_to_image/class_R1" in real and baseline is not None:
        value = real["audio_to_image/class_R1"]
        rows.append({"check": "MNIST+FSDD audio->image class R1 >= audio-only acc - 0.02", "value": value,
                     "baseline": baseline, "met": value >= baseline - BASELINE_MARGIN})
    if "text_to_image/class_R1" in real:
        value = real["text_to_image/class_R1"]
        rows.append({"check": "MNIST+FSDD text->image class R1 >= 0.99", "value": value,
                     "met": value >= TEXT_IMAGE_TARGET})
    for data in ("builtin", "mnist_fsdd"):
        ft = summary[data].get("finetune", {})
        first = {n: ft.get(n, {}).get("first_epoch_reaching_target") for n in ("aligned", "scratch")}
        if "target" in ft:
            # never reaching the target counts as later than any epoch
            met = first["aligned"] is not None and (first["scratch"] is None or first["aligned"] < first["scratch"])
            rows.append({"check": f"{data}: fine-tuning from aligned towers reaches 98 % of the best val/acc "
                         "in fewer epochs", "aligned_epoch": first["aligned"],
                         "scratch_epoch": first["scratch"], "met": met})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the OUT folder of clip_gpu.sh")
    args = parser.parse_args()
    out = args.out
    baseline = load_run(out / "audio_only_mnist_fsdd")
    summary = {
        "builtin": {
            "clip": clip_section(out / "clip_builtin"),
            "finetune": finetune_section(out / "ft_builtin_scratch", out / "ft_builtin_aligned"),
        },
        "mnist_fsdd": {
            "clip": clip_section(out / "clip_mnist_fsdd"),
            "audio_only_test_acc": None if baseline is None else baseline.get("acc"),
            "audio_only_epochs_run": epochs_run(out / "audio_only_mnist_fsdd"),
            "finetune": finetune_section(out / "ft_mnist_fsdd_scratch", out / "ft_mnist_fsdd_aligned"),
        },
    }
    summary["acceptance"] = acceptance(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    for row in summary["acceptance"]:
        detail = {k: v for k, v in row.items() if k not in ("check", "met")}
        print(f"[{'met' if row['met'] else 'NOT met'}] {row['check']}: {json.dumps(detail)}")
    for data in ("builtin", "mnist_fsdd"):
        directions = summary[data]["clip"].get("directions", {})
        class_r1 = {k.split("/")[0]: round(v, 4) for k, v in directions.items() if k.endswith("/class_R1")}
        print(f"{data} class R1: {json.dumps(class_r1)}")
        print(f"{data} cosines: {json.dumps({k: round(v, 4) for k, v in summary[data]['clip'].get('cosine_768d', {}).items()})}")
    print(f"wrote {out / 'summary.json'}")


if __name__ == "__main__":
    main()
