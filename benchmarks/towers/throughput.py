"""Training cost of pretrained-shape towers next to the built-in ones: samples/s and peak RSS (or GPU memory) of
the late recipe at batch 64 on MNIST + FSDD, each tower in its own process, all in one run.

    python -m fusion.commands.manifest builder=pair_digits builder.images=../shared/data/mnist \
        builder.audio=../shared/data/fsdd/recordings builder.test_speaker=theo builder.out=/tmp/mnist_fsdd/manifest.csv
    python benchmarks/towers/throughput.py --manifest /tmp/mnist_fsdd/manifest.csv --steps 20 \
        --out benchmarks/towers/results/throughput_cpu.json

Random weights (`:none`; the audio tower: a folder with wav2vec2-base's config and feature extractor, built here),
so nothing is downloaded; the cost is the same as with the pretrained weights.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

WAV2VEC2_BASE = Path("/tmp/towers-bench/wav2vec2-base-random")  # random_wav2vec2_base writes it
FROZEN = "+model.encoders.{m}={{_target_:fusion.encoders.pretrained.PretrainedEncoder,modality:{m},tower:'{t}',freeze:true}}"

# name -> overrides on top of the late recipe; each row changes one tower, the other stays built-in
TOWERS = {
    "builtin": [],
    "tv:resnet18@224": ["model.encoders.image=tv:resnet18:none"],  # the weights' transforms: 256 -> crop 224
    "tv:resnet18@64": ["model.encoders.image=tv:resnet18:none", "data.image_size=64"],
    "tv:resnet18@224-frozen": ["~model.encoders.image", FROZEN.format(m="image", t="tv:resnet18:none")],
    "hf:wav2vec2-base": [f"model.encoders.audio=hf:{WAV2VEC2_BASE}"],  # 16 kHz, batches padded to the longest clip
    "hf:wav2vec2-base-frozen": ["~model.encoders.audio", FROZEN.format(m="audio", t=f"hf:{WAV2VEC2_BASE}")],
}


def random_wav2vec2_base(folder: Path) -> None:
    """facebook/wav2vec2-base's shape (transformers' default Wav2Vec2Config: 12 layers of 768, group-norm conv
    feature encoder, no attention mask) and its feature extractor settings, with random weights."""
    if (folder / "config.json").exists():
        return
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=False).save_pretrained(folder)


def measure(name: str, manifest: str, steps: int, warmup: int, accelerator: str) -> dict:
    """Fits `warmup + steps` batches; times the last `steps`."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from fusion.commands.app import compose_config
    from fusion.training import build_task

    overrides = ["recipe=late", f"data.manifest={manifest}", "data.modalities=[image,audio]", "data.batch_size=64",
                 "run_dir=/tmp/towers-bench", *TOWERS[name]]
    cfg = compose_config("config", overrides)
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    task = build_task(cfg, datamodule)
    times: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if accelerator == "gpu":
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if accelerator == "gpu":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

    trainer = L.Trainer(accelerator=accelerator, devices=1, max_epochs=1, limit_train_batches=warmup + steps,
                        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Clock()],
                        precision="bf16-mixed" if accelerator == "gpu" else "32-true")
    trainer.fit(task, datamodule=datamodule)
    timed = sorted(times[warmup:])
    median = timed[len(timed) // 2]
    params = sum(p.numel() for p in task.parameters())
    trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
    batch = next(iter(datamodule.train_dataloader()))
    audio = batch["audio"]["input_values"] if isinstance(batch["audio"], dict) else batch["audio"]  # (B, L)
    result = {"tower": name, "image_input": list(batch["image"].shape[1:]), "audio_input": list(audio.shape[1:]),
              "params_M": round(params / 1e6, 2), "trainable_M": round(trainable / 1e6, 2), "steps": len(timed),
              "median_step_s": round(median, 4), "samples_per_s": round(64 / median, 1),
              "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if accelerator == "gpu":
        result["peak_gpu_MiB"] = round(torch.cuda.max_memory_allocated() / 2**20)
        result["device"] = torch.cuda.get_device_name()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="/tmp/mnist_fsdd/manifest.csv")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--towers", nargs="*", default=list(TOWERS))
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one tower and print JSON
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, args.manifest, args.steps, args.warmup, args.accelerator)))
        return
    if any("wav2vec2" in name for name in args.towers):
        random_wav2vec2_base(WAV2VEC2_BASE)
    rows = []
    for name in args.towers:
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--manifest", args.manifest, "--steps",
                               str(args.steps), "--warmup", str(args.warmup), "--accelerator", args.accelerator],
                              capture_output=True, text=True, cwd=REPO)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(lines[-1][7:]))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    for row in rows:
        row["speed_vs_first"] = round(row["samples_per_s"] / base["samples_per_s"], 3)
        row["rss_vs_first"] = round(row["peak_rss_MiB"] / base["peak_rss_MiB"], 2)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
