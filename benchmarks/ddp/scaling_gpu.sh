#!/usr/bin/env bash
# DDP comm-hook throughput on 1, 2 and 4 GPUs of one host (NCCL), all hooks side by side per launch.
#   usage: benchmarks/ddp/scaling_gpu.sh OUT_DIR [GPU counts, default "1 2 4"] [models, default "progressive clip resnet50"]
# Writes OUT_DIR/<model>-<n>gpu.json per launch, OUT_DIR/*.log, and OUT_DIR/results.md (scaling table with
# efficiency against 1 GPU without a hook, plus the slow-link time-per-byte model at 1/10/25/100 Gbit/s).
# On 1 GPU only "none" runs (the scaling base; hooks do nothing there). Budget per launch: every hook gets
# WARMUP + ROUNDS x (2 + STEPS) steps; about 6 minutes in all on 4 x H100. No Hydra needed.
set -uo pipefail
OUT=${1:?usage: benchmarks/ddp/scaling_gpu.sh OUT_DIR [GPU counts] [models]}
COUNTS=${2:-"1 2 4"}
MODELS=${3:-"progressive clip resnet50"}
HOOKS=${HOOKS:-"none allreduce fp16 bf16 int8 topk powersgd torch_uint8"}
STEPS=${STEPS:-20}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-5}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
AVAILABLE=$("$PY" -c "import torch; print(torch.cuda.device_count())")
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpus.csv" 2>/dev/null || true
START=$SECONDS
for n in $COUNTS; do
  if [ "$n" -gt "$AVAILABLE" ]; then echo "skip $n GPUs: only $AVAILABLE visible"; continue; fi
  if [ "$n" -eq 1 ]; then hooks="none"; else hooks=$HOOKS; fi
  for model in $MODELS; do
    echo "== $model on $n GPU(s) (t=$((SECONDS - START)) s)"
    # shellcheck disable=SC2086
    "$PY" -m torch.distributed.run --standalone --nproc_per_node "$n" "$REPO/benchmarks/ddp/throughput.py" \
      --model "$model" --device cuda --bf16 --channels-last --batch-size 64 --warmup "$WARMUP" --steps "$STEPS" \
      --rounds "$ROUNDS" --hooks $hooks --out "$OUT/$model-${n}gpu.json" > "$OUT/$model-${n}gpu.log" 2>&1 \
      || echo "FAILED: $model on $n GPU(s), see $OUT/$model-${n}gpu.log"
    grep -E "samples/s|failed|skipped" "$OUT/$model-${n}gpu.log" || true
  done
done
echo "total $((SECONDS - START)) s"
"$PY" "$REPO/benchmarks/ddp/throughput.py" --report "$OUT/*.json" --report-gbps 1 10 25 100 > "$OUT/results.md"
cat "$OUT/results.md"
