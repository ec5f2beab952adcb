#!/usr/bin/env bash
# DDP comm-hook throughput on 1, 2 and 4 GPUs of one host (NCCL), all hooks side by side per launch.
#   usage: benchmarks/ddp_gpu.sh OUT_DIR [GPU counts, default "1 2 4"] [models, default see below]
# Writes OUT_DIR/<model>-<n>gpu.json per launch, OUT_DIR/*.log, and OUT_DIR/results.md (scaling table with
# efficiency against 1 GPU without a hook, plus the slow-link time-per-byte model). No Hydra needed.
set -uo pipefail
OUT=${1:?usage: benchmarks/ddp_gpu.sh OUT_DIR [GPU counts] [models]}
COUNTS=${2:-"1 2 4"}
MODELS=${3:-"progressive clip progressive-r50 resnet50"}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
AVAILABLE=$("$PY" -c "import torch; print(torch.cuda.device_count())")
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpus.csv" 2>/dev/null || true
for n in $COUNTS; do
  if [ "$n" -gt "$AVAILABLE" ]; then echo "skip $n GPUs: only $AVAILABLE visible"; continue; fi
  for model in $MODELS; do
    echo "== $model on $n GPU(s)"
    "$PY" -m torch.distributed.run --standalone --nproc_per_node "$n" "$REPO/benchmarks/ddp_throughput.py" \
      --model "$model" --device cuda --bf16 --channels-last --batch-size 64 --warmup 5 --steps 20 --rounds 3 \
      --out "$OUT/$model-${n}gpu.json" > "$OUT/$model-${n}gpu.log" 2>&1 \
      || echo "FAILED: $model on $n GPU(s), see $OUT/$model-${n}gpu.log"
    grep -E "samples/s|failed|skipped" "$OUT/$model-${n}gpu.log" || true
  done
done
"$PY" "$REPO/benchmarks/ddp_throughput.py" --report "$OUT/*.json" --report-gbps 1 10 25 100 > "$OUT/results.md"
cat "$OUT/results.md"
