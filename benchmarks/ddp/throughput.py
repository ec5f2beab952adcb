"""Data-parallel throughput and wire bytes of every comm hook, side by side in one launch.

Launch with torchrun (CPU/gloo or CUDA/NCCL); no Hydra needed. Synthetic batches with the shapes of the
real recipes' inputs. Every hook trains its own DDP copy of the same model; hooks are timed round-robin
(``--rounds``), so slow drift of the machine hits all of them alike, and the median round is reported.

    torchrun --nproc_per_node 2 benchmarks/ddp/throughput.py --model progressive-r50 --device cuda --bf16 \
        --out results/progressive-r50-2gpu.json
    python benchmarks/ddp/throughput.py --report results/*.json > results.md   # scaling table + slow link

Slow link: each JSON row carries the measured step time and the wire bytes/collectives per step, so the
report adds a time-per-byte model, ``t_link = t_measured + bytes / bandwidth + collectives * latency``
(no overlap assumed for the added time). ``--emulate-gbps`` instead injects that delay into training itself:
every hook's future completes only after ``latency + bytes / bandwidth`` (gloo: a sleep on the collective's
callback thread, so it overlaps with the rest of backward as a real slow link would).
"""

import argparse
import glob
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import quantization_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from fusion.distributed.accounting import WireCounter
from fusion.distributed.registry import make_comm_hook

HOOK_ARGS = {
    "allreduce": {},
    "fp16": {},
    "bf16": {},
    "int8": {},
    "topk": {"ratio": 0.001, "warmup_steps": 2, "density_warmup_steps": 0},  # 0.1 % after 2 dense steps
    "powersgd": {"rank": 2, "warmup_steps": 2},
}


# ---- models with the recipes' shapes ----------------------------------------------------------------------
class ClassifierNet(nn.Module):
    """A classifier (the progressive recipe's FusionModel, or a torchvision net) with its loss."""

    def __init__(self, model: nn.Module, multimodal: bool) -> None:
        super().__init__()
        self.model, self.multimodal = model, multimodal

    def forward(self, batch: dict) -> torch.Tensor:
        logits = self.model(batch if self.multimodal else batch["image"])  # (B, K)
        return F.cross_entropy(logits, batch["label"])


class ClipNet(nn.Module):
    """The clip recipe's towers + 768-d heads and contrastive loss (gathers negatives across ranks)."""

    def __init__(self, encoders: nn.ModuleDict) -> None:
        super().__init__()
        from fusion.alignment.loss import TOTAL_KEY, ContrastiveLoss
        from fusion.alignment.model import AlignmentModel
        from fusion.alignment.projection import ProjectionHead

        heads = nn.ModuleDict({m: ProjectionHead(e.out_dim, 768) for m, e in encoders.items()})
        self.model, self.loss, self.total_key = AlignmentModel(encoders, heads), ContrastiveLoss(), TOTAL_KEY

    def forward(self, batch: dict) -> torch.Tensor:
        return self.loss(self.model(batch), batch["mask"])[self.total_key]


def recipe_encoders(image_backbone: str, image_channels: int) -> nn.ModuleDict:
    """The default encoders of recipes/model/encoders/default.yaml (data: 8 kHz audio, byte text)."""
    from fusion.encoders.audio import AudioEncoder
    from fusion.encoders.image import ImageEncoder
    from fusion.encoders.text import TextEncoder

    return nn.ModuleDict({
        "image": ImageEncoder(backbone=image_backbone, in_channels=image_channels, out_dim=128, width=16),
        "audio": AudioEncoder(sample_rate=8000, n_mels=40, out_dim=128, width=16),
        "text": TextEncoder(vocab_size=259, out_dim=64, num_layers=2, num_heads=4, max_length=128),
    })


def build(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """Model (returns the loss) and the image shape (C, H, W) of its batches."""
    if name == "resnet50":  # the reference configuration: torchvision ResNet-50 at 128x128
        import torchvision

        return ClassifierNet(torchvision.models.resnet50(num_classes=1000), multimodal=False), (3, 128, 128)
    from fusion.fusions.model import FusionModel
    from fusion.fusions.progressive import ProgressiveFusion

    backbone, shape = ("resnet50", (3, 128, 128)) if name.endswith("-r50") else ("cnn", (1, 32, 32))
    encoders = recipe_encoders(backbone, shape[0])
    if name.startswith("clip"):
        return ClipNet(encoders), shape
    fusion = ProgressiveFusion({m: e.out_dim for m, e in encoders.items()}, num_classes=10, hidden_dim=128,
                               num_stages=2, dropout=0.1, gate={"hidden_dim": 64, "temperature": 1.0,
                                                                "entropy_weight": 0.01, "balance_weight": 0.0})
    return ClassifierNet(FusionModel(dict(encoders), fusion, modality_dropout=0.15), multimodal=True), shape


def make_batch(batch_size: int, shape: tuple[int, int, int], classes: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(1234 + (dist.get_rank() if dist.is_initialized() else 0))
    ones = torch.ones(batch_size, dtype=torch.bool)
    batch = {
        "image": torch.randn(batch_size, *shape, generator=generator),  # (B, C, H, W)
        "audio": torch.randn(batch_size, 8000, generator=generator) * 0.1,  # (B, L) 1 s at 8 kHz
        "text": {"input_ids": torch.randint(3, 259, (batch_size, 32), generator=generator),  # (B, T)
                 "attention_mask": torch.ones(batch_size, 32, dtype=torch.long)},
        "mask": {"image": ones, "audio": ones, "text": ones},
        "label": torch.randint(0, classes, (batch_size,), generator=generator),
    }
    return _to(batch, device)


def _to(value, device):
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value.to(device, non_blocking=True)


# ---- hooks --------------------------------------------------------------------------------------------------
def torch_uint8_hook(counter: WireCounter) -> Callable:
    """torch's experimental per-tensor uint8 hook (all-gathers uint8 buckets), with its bytes counted."""

    def hook(state, bucket):
        numel = bucket.buffer().numel()
        counter.add_allgather(2 * 4)  # scale and zero point
        counter.add_allgather(numel)  # uint8 bucket
        counter.add_bucket(numel, compressed=True)
        if bucket.is_last():
            counter.end_step()
        future = quantization_hooks.quantization_pertensor_hook(None, bucket)
        if dist.get_backend() == "gloo":  # it starts its second all-gather from a callback
            future.wait()
        return future

    return hook


def slow_link(hook: Callable, counter: WireCounter, gbps: float, latency_us: float) -> Callable:
    """Delays each bucket's future by ``latency + bytes / bandwidth`` of what the hook just put on the wire."""

    def delayed(state, bucket):
        before_bytes, before_collectives = counter.bytes_so_far, counter.collectives_so_far
        future = hook(state, bucket)
        sent = counter.bytes_so_far - before_bytes
        delay = (counter.collectives_so_far - before_collectives) * latency_us * 1e-6 + sent * 8 / (gbps * 1e9)

        def wait(done):
            time.sleep(delay)
            return done.value()

        return future.then(wait)

    return delayed


def wrap(model: nn.Module, hook_name: str, device: torch.device, args: argparse.Namespace):
    """DDP copy of ``model`` with hook ``hook_name``; returns (ddp, counter or None)."""
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
              bucket_cap_mb=args.bucket_cap_mb)
    if hook_name == "none":
        if args.emulate_gbps:  # DDP's own all-reduce, counted and delayed through torch's plain hook
            state, hook = make_comm_hook("allreduce", model, None, {})
            ddp.register_comm_hook(state, slow_link(hook, state.counter, args.emulate_gbps, args.latency_us))
            return ddp, state.counter
        return ddp, None
    if hook_name == "torch_uint8":
        counter = WireCounter(dist.get_world_size())
        hook = torch_uint8_hook(counter)
        if args.emulate_gbps:
            hook = slow_link(hook, counter, args.emulate_gbps, args.latency_us)
        ddp.register_comm_hook(None, hook)
        return ddp, counter
    state, hook = make_comm_hook(hook_name, model, None, HOOK_ARGS[hook_name])
    if args.emulate_gbps:
        hook = slow_link(hook, state.counter, args.emulate_gbps, args.latency_us)
    ddp.register_comm_hook(state, hook)
    return ddp, state.counter


def fp32_bytes_per_step(model: nn.Module, world: int) -> float:
    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 2.0 * (world - 1) / world * 4 * numel


def run(args: argparse.Namespace) -> list[dict]:
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.device == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
        torch.set_num_threads(args.threads)
    hooks = list(args.hooks)
    if args.device == "cpu" and "torch_uint8" in hooks:  # its future nesting assumes NCCL; fails on gloo
        hooks.remove("torch_uint8")
        if rank == 0:
            print("torch_uint8 skipped: torch's quantization_pertensor_hook does not run on gloo", flush=True)
    trainers = {}
    for hook_name in hooks:
        torch.manual_seed(0)
        model, shape = build(args.model)
        model = model.to(device).to(memory_format=torch.channels_last) if args.channels_last else model.to(device)
        ddp, counter = wrap(model, hook_name, device, args)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=1e-3, momentum=0.9)
        trainers[hook_name] = (ddp, counter, optimizer)
    batch = make_batch(args.batch_size, shape, 1000 if args.model == "resnet50" else 10, device)
    reference_bytes = fp32_bytes_per_step(trainers[hooks[0]][0].module, world)

    def step(ddp, optimizer):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = ddp(batch)
        loss.backward()
        optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier()

    failed = []
    for hook_name, (ddp, _, optimizer) in trainers.items():
        try:
            step(ddp, optimizer)
            ok = torch.zeros(1, device=device)
        except RuntimeError as error:  # e.g. an experimental torch hook that breaks: report, go on
            print(f"rank {rank}: hook {hook_name} failed: {str(error)[:300]}", flush=True)
            ok = torch.ones(1, device=device)
        dist.all_reduce(ok, op=dist.ReduceOp.MAX)
        if ok.item() > 0:
            failed.append(hook_name)
            continue
        for _ in range(args.warmup - 1):
            step(ddp, optimizer)
    for hook_name in failed:
        del trainers[hook_name]
    hooks = [h for h in hooks if h not in failed]
    times = {h: [] for h in hooks}
    sent = {h: [] for h in hooks}
    collectives = {h: [] for h in hooks}
    for _ in range(args.rounds):
        for hook_name, (ddp, counter, optimizer) in trainers.items():
            for _ in range(2):
                step(ddp, optimizer)
            sync()
            start_bytes = counter.total_bytes if counter else 0.0
            start_collectives = counter.total_collectives if counter else 0
            start = time.perf_counter()
            for _ in range(args.steps):
                step(ddp, optimizer)
            sync()
            times[hook_name].append((time.perf_counter() - start) / args.steps)
            if counter:
                sent[hook_name].append((counter.total_bytes - start_bytes) / args.steps)
                collectives[hook_name].append((counter.total_collectives - start_collectives) / args.steps)
    rows = []
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{args.threads} threads"
    for hook_name in hooks:
        step_time = statistics.median(times[hook_name])
        bytes_per_step = statistics.median(sent[hook_name]) if sent[hook_name] else reference_bytes
        rows.append({
            "model": args.model, "hook": hook_name, "hook_args": HOOK_ARGS.get(hook_name, {}), "world_size": world,
            "device": device_name, "bf16": args.bf16, "batch_per_rank": args.batch_size,
            "emulate_gbps": args.emulate_gbps, "latency_us": args.latency_us,
            "step_s": step_time, "step_s_rounds": times[hook_name],
            "samples_per_s": world * args.batch_size / step_time,
            "bytes_per_step": bytes_per_step, "fp32_bytes_per_step": reference_bytes,
            "compression": reference_bytes / bytes_per_step if bytes_per_step else float("nan"),
            "collectives_per_step": statistics.median(collectives[hook_name]) if collectives[hook_name]
            else None,
            "failed_hooks": failed,
            "params": sum(p.numel() for p in trainers[hook_name][0].module.parameters()),
        })
    counted = {r["hook"]: r for r in rows}
    if counted.get("none", {}).get("collectives_per_step", 0) is None and "allreduce" in counted:
        counted["none"]["collectives_per_step"] = counted["allreduce"]["collectives_per_step"]  # same buckets
    dist.destroy_process_group()
    return rows if rank == 0 else []


# ---- report -------------------------------------------------------------------------------------------------
def report(paths: list[str], gbps: list[float], latency_us: float) -> str:
    rows = [row for path in paths for row in json.loads(open(path).read())]
    lines = []
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model and not r["emulate_gbps"]]
        if not mine:
            continue
        one = {r["hook"]: r for r in mine if r["world_size"] == 1}
        base = one.get("none")
        worlds = sorted({r["world_size"] for r in mine})
        lines += [f"### {model} ({mine[0]['device']}, batch {mine[0]['batch_per_rank']}/rank, "
                  f"bf16 autocast: {mine[0]['bf16']}, {mine[0]['params'] / 1e6:.1f} M parameters)", "",
                  "| hook | " + " | ".join(f"{w} x: samples/s (scaling eff.)" for w in worlds)
                  + " | bytes/step (compression) |",
                  "|---|" + "---|" * len(worlds) + "---|"]
        for hook in dict.fromkeys(r["hook"] for r in mine):
            cells = []
            for w in worlds:
                r = next((r for r in mine if r["hook"] == hook and r["world_size"] == w), None)
                if r is None:
                    cells.append("-")
                    continue
                eff = r["samples_per_s"] / (w * base["samples_per_s"]) if base else float("nan")
                cells.append(f"{r['samples_per_s']:.0f} ({100 * eff:.1f} %)")
            widest = max((r for r in mine if r["hook"] == hook), key=lambda r: r["world_size"])
            cells.append(f"{widest['bytes_per_step'] / 1e6:.2f} MB ({widest['compression']:.1f}x)"
                         if widest["world_size"] > 1 else "-")
            lines.append(f"| {hook} | " + " | ".join(cells) + " |")
        lines.append("")
        multi = [r for r in mine if r["world_size"] > 1]
        for w in sorted({r["world_size"] for r in multi}):
            lines += [f"Slow-link model at {w} ranks (measured step + bytes/bandwidth + {latency_us:.0f} us per "
                      "collective; samples/s):", "",
                      "| hook | measured | " + " | ".join(f"{g:g} Gbit/s" for g in gbps) + " |",
                      "|---|---|" + "---|" * len(gbps)]
            for r in [r for r in multi if r["world_size"] == w]:
                cells = []
                for g in gbps:
                    t = (r["step_s"] + r["bytes_per_step"] * 8 / (g * 1e9)
                         + (r["collectives_per_step"] or 1) * latency_us * 1e-6)
                    cells.append(f"{w * r['batch_per_rank'] / t:.0f}")
                lines.append(f"| {r['hook']} | {r['samples_per_s']:.0f} | " + " | ".join(cells) + " |")
            lines.append("")
        emulated = [r for r in rows if r["model"] == model and r["emulate_gbps"]]
        if emulated:
            lines += [f"Emulated slow link (delay injected per collective, overlapping backward) for {model}:", "",
                      "| ranks | Gbit/s | hook | samples/s | step s | bytes/step |", "|---|---|---|---|---|---|"]
            for r in emulated:
                lines.append(f"| {r['world_size']} | {r['emulate_gbps']:g} | {r['hook']} | {r['samples_per_s']:.1f} | "
                             f"{r['step_s']:.3f} | {r['bytes_per_step'] / 1e6:.3f} MB |")
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="progressive",
                        choices=["progressive", "progressive-r50", "clip", "clip-r50", "resnet50"])
    parser.add_argument("--hooks", nargs="+",
                        default=["none", "allreduce", "fp16", "bf16", "int8", "topk", "powersgd", "torch_uint8"],
                        choices=["none", "torch_uint8", *HOOK_ARGS])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0)
    parser.add_argument("--emulate-gbps", type=float, default=0.0, help="inject a slow link of this bandwidth")
    parser.add_argument("--latency-us", type=float, default=50.0)
    parser.add_argument("--out", help="JSON file for the rows (rank 0)")
    parser.add_argument("--report", nargs="+", help="JSON files to combine into markdown (no training)")
    parser.add_argument("--report-gbps", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    args = parser.parse_args()
    if args.report:
        print(report(sorted(p for pattern in args.report for p in glob.glob(pattern)), args.report_gbps,
                     args.latency_us))
        return
    rows = run(args)
    if rows:
        text = json.dumps(rows, indent=2)
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                f.write(text)
        for r in rows:
            print(f"{r['model']} {r['hook']:>11} x{r['world_size']}: {r['samples_per_s']:8.1f} samples/s "
                  f"step {1e3 * r['step_s']:7.1f} ms  {r['bytes_per_step'] / 1e6:8.3f} MB/step "
                  f"({r['compression']:.1f}x)", flush=True)


if __name__ == "__main__":
    main()
