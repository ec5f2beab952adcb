"""Training-step cost of `model.unimodal_loss_inputs=clean` against `seen`, side by side in one process.

    python benchmarks/robustness/own_inputs_cost.py [--recipe progressive] [--steps 30] [--manifest M] [--threads 2]

`clean` runs the encoders of the corruptible modalities a second time on the batch before corruption. Both models train on the
same batches in alternation, the first of each pair alternating (forward, backward, AdamW step, training
corruption included); prints the median step time of each and their ratio, on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra.utils import instantiate

from fusion.commands.app import compose_config


def build(recipe: str, manifest: str | None, inputs: str):
    overrides = [f"recipe={recipe}", f"model.unimodal_loss_inputs={inputs}"]
    if manifest:
        overrides.append(f"data.manifest={manifest}")
    cfg = compose_config("config", overrides)
    data = instantiate(cfg.data)
    data.prepare()
    task = instantiate(cfg.model, data_spec=data.spec, _recursive_=False, _convert_="all").train()
    return task, data


def step(task, optimizer, batch: dict) -> float:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    corrupted = task.corruption(batch)
    total, _ = task._step_loss(task.model.forward_with_details(corrupted), corrupted)
    total.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="progressive")
    parser.add_argument("--manifest", default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {inputs: build(args.recipe, args.manifest, inputs) for inputs in ("seen", "clean")}
    optimizers = {k: torch.optim.AdamW(task.parameters(), lr=1e-3) for k, (task, _) in models.items()}
    data = models["seen"][1]
    loader = iter(data.train_dataloader())
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(args.steps + 3):
        batch = next(loader, None)
        if batch is None or batch["label"].shape[0] != data.batch_size:  # a new epoch; full batches only
            loader = iter(data.train_dataloader())
            batch = next(loader)
        order = list(models) if i % 2 == 0 else list(models)[::-1]  # which one goes first alternates
        for k in order:
            seconds = step(models[k][0], optimizers[k], batch)
            if i >= 3:  # warm-up steps
                times[k].append(seconds)
    medians = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"recipe={args.recipe}, {args.steps} steps each, batch {batch['label'].shape[0]}, {args.threads} threads")
    for k, ms in medians.items():
        print(f"  {k}: {ms:.1f} ms per step (median)")
    print(f"  clean / seen: {medians['clean'] / medians['seen']:.2f}")


if __name__ == "__main__":
    main()
