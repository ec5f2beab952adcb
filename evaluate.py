"""Accuracy-vs-latency evaluation of trained runs (and audio-video sync evaluation with recipe=sync).

    python evaluate.py ckpt=checkpoints/progressive/20260101-120000
    python evaluate.py ckpt=checkpoints/early/A,checkpoints/late/B,checkpoints/progressive/C out_dir=reports/digits
    python evaluate.py ckpt=<run> data.manifest=path/to/manifest.csv device=cpu variants=fp32,int8 threads=2
    python evaluate.py recipe=sync ckpt=<sync run>

Arguments are ``key=value`` (Hydra style, parsed without Hydra so a bare torch install can run it); a bare
path counts as one more ``ckpt``. Keys: ckpt, out_dir, device (cpu|cuda|cpu,cuda), variants
(fp32,bf16,compile,int8), threads, warmup, iters, batch_sizes, robustness (true|false), noise_levels,
max_test_samples, seed, data.<key> (any data-module argument, e.g. data.manifest, data.batch_size),
cache_batches=true (store the decoded test split as <run folder>/test_batches.pt) and from_cache=true
(evaluate from that file: no media files or data decoders needed, e.g. on a GPU machine).
"""

from __future__ import annotations

import sys

import yaml

from fusion.eval.sweep import EvalSettings, run_sweep

LIST_KEYS = {"ckpt": str, "device": str, "variants": str, "batch_sizes": int, "noise_levels": float}
SCALAR_KEYS = {"out_dir", "threads", "warmup", "iters", "robustness", "max_test_samples", "seed", "recipe",
               "cache_batches", "from_cache"}


def parse_arguments(argv: list[str]) -> dict:
    """``key=value`` tokens -> dict; lists split on commas (``[a,b]`` also accepted); ``data.x`` nested."""
    parsed: dict = {"data": {}}
    for token in argv:
        key, sep, raw = token.partition("=")
        if not sep:
            key, raw = "ckpt", token
        key = key.lstrip("+")
        if key.startswith("data."):
            parsed["data"][key[len("data."):]] = yaml.safe_load(raw) if raw else None
        elif key in LIST_KEYS:
            items = [item.strip() for item in raw.strip("[]").split(",") if item.strip()]
            parsed.setdefault(key, []).extend(LIST_KEYS[key](item) for item in items)
        elif key in SCALAR_KEYS:
            parsed[key] = raw if key in ("out_dir", "recipe") else yaml.safe_load(raw)
        else:
            known = sorted(set(LIST_KEYS) | SCALAR_KEYS | {"data.<key>"})
            raise SystemExit(f"evaluate.py: unknown argument '{token}'; known keys: {', '.join(known)}")
    return parsed


def main(argv: list[str]) -> None:
    arguments = parse_arguments(argv)
    if arguments.get("recipe") == "sync":
        from fusion.eval.sync_eval import evaluate_sync
        from omegaconf import OmegaConf

        arguments["ckpt"] = ",".join(arguments.get("ckpt", [])) or None
        if "device" in arguments:
            arguments["device"] = arguments["device"][0]
        evaluate_sync(OmegaConf.create(arguments))
        return
    if arguments.get("recipe") is not None:
        raise SystemExit(f"evaluate.py: recipe={arguments['recipe']} is not evaluable here (only recipe=sync)")
    settings = EvalSettings(ckpt=arguments.pop("ckpt", []))
    if "device" in arguments:
        settings.devices = arguments.pop("device")
    for key, value in arguments.items():
        if key == "data":
            settings.data = value
        elif key != "recipe":
            setattr(settings, key, value)
    run_sweep(settings)


if __name__ == "__main__":
    main(sys.argv[1:])
