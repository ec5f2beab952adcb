#!/usr/bin/env bash
# Top-k 0.1 % with local_adam on a 2-GPU host, in one go:
#   - on the host CPUs (2 gloo processes per run, JOBS runs at once), seeds 0-7 of the default 6 epochs:
#     uncompressed local Adam (dense hook, SGD applying its steps: how much local Adam itself costs) and
#     local_adam with Adam's beta2 = 0.99;
#   - meanwhile on the 2 GPUs (NCCL), seed 0 of 12 epochs: no hook vs top-k 0.1 % with local_adam.
#
#   bash benchmarks/ddp_local_adam.sh OUT
set -uo pipefail
OUT=$(mkdir -p "${1:?usage: ddp_local_adam.sh OUT}" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpus.txt" 2>/dev/null || true
SGD=(model.optimizer=sgd model.momentum=0)
TOPK=(comm_hook=topk +comm_hook_args.ratio=0.001 +comm_hook_args.warmup_steps=10
      +comm_hook_args.density_warmup_steps=96 +comm_hook_args.local_adam=true)
VARIANTS=("denseadam=topk:warmup_steps=100000,local_adam=true;${SGD[0]};${SGD[1]}"
          "topk0.1adamb99=topk:ratio=0.001,warmup_steps=10,density_warmup_steps=96,local_adam=true,adam_beta2=0.99;${SGD[0]};${SGD[1]}")

# the built-in data set, generated once before the CPU and GPU runs start
"$PY" -c "from omegaconf import OmegaConf; from fusion.data.builtin_digits import ensure_builtin_digits as e
n = list(OmegaConf.load('recipes/data/manifest.yaml').builtin_size); print(e(n_train=n[0], n_val=n[1], n_test=n[2]))" \
  > "$OUT/data.log" 2>&1
(timeout "${CPU_SECONDS:-450}" "$PY" benchmarks/ddp_accuracy.py --out checkpoints/ddp_local_adam --jobs "${JOBS:-14}" \
   --seeds 0 1 2 3 4 5 6 7 --variants "${VARIANTS[@]}" > "$OUT/cpu.log" 2>&1
 "$PY" benchmarks/ddp_accuracy.py --out checkpoints/ddp_local_adam --report --seeds 0 1 2 3 4 5 6 7 \
   --variants "${VARIANTS[@]}" > "$OUT/cpu_report.md" 2>&1
 cp checkpoints/ddp_local_adam/results.json "$OUT/cpu.json") &

for hook in none local_adam; do
  extra=(comm_hook=none)
  [[ $hook == local_adam ]] && extra=("${TOPK[@]}" "${SGD[@]}")
  timeout "${GPU_SECONDS:-200}" "$PY" train.py recipe=progressive trainer.strategy=ddp trainer.devices=2 \
    trainer.accelerator=gpu trainer.max_epochs=12 seed=0 run_dir="$PWD/checkpoints/ddp_gpu_$hook" "${extra[@]}" \
    > "$OUT/gpu_$hook.log" 2>&1
  cp "checkpoints/ddp_gpu_$hook/metrics.json" "$OUT/gpu_$hook.json" 2>/dev/null
done
wait
