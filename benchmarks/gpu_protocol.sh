#!/usr/bin/env bash
# The GPU-host side of BENCHMARKS.md, in two rounds on one multi-GPU host (4 GPUs, 64 CPU cores):
#
#   bash benchmarks/gpu_protocol.sh train   OUT   # CPU/GPU-parallel trainings: fusion accuracy sweep,
#                                                # CLIP protocol, DDP accuracy protocol (2-process gloo runs)
#   bash benchmarks/gpu_protocol.sh measure OUT   # timings on a quiet host: evaluate.py on CUDA for the sweep's
#                                                # early/late/progressive runs, CRF benchmark, DDP scaling
#
# Real data is read from $REALDATA (default .devdata: mnist/ and fsdd/recordings/ as in ../shared/data).
# Results go to OUT (JSON/markdown); run folders stay under checkpoints/ (git-ignored); `train` also packs the
# run folders that the CPU evaluation needs into OUT/runs.tar.gz (best checkpoint, config, metrics, manifest).
set -uo pipefail
STAGE=${1:?usage: gpu_protocol.sh train|measure OUT}
OUT=${2:?usage: gpu_protocol.sh train|measure OUT}
cd "$(dirname "$0")/.."
PY=${PY:-python3}
REALDATA=${REALDATA:-$PWD/.devdata}
SWEEP=${SWEEP:-checkpoints/fusion_sweep}
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
export PYTHONUNBUFFERED=1 FUSION_REALDATA=$REALDATA
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpus.txt" 2>/dev/null || true

fusion_sweep() {
  # built-in set: default recipes (6 epochs); MNIST + FSDD: width-32 encoders, 25 epochs, two seeds per cell
  "$PY" benchmarks/fusion_accuracy.py --realdata "$REALDATA" --out "$SWEEP" --jobs "${FUSION_JOBS:-28}" \
    --gpus "$GPUS" --threads 1 --speakers theo nicolas jackson yweweler --seeds 0 1 --builtin-seeds 0 1 \
    --real-epochs 25 --real-extra model.encoders.image.width=32 model.encoders.audio.width=32 \
    > "$OUT/fusion_sweep.log" 2>&1
  cp "$SWEEP/results.json" "$OUT/fusion_sweep.json"
  # run folders for the CPU accuracy-vs-latency evaluation (seed 0, built-in and the theo split)
  tar -czf "$OUT/runs.tar.gz" -C "$SWEEP" manifests/fsdd-theo/manifest.csv \
    $(cd "$SWEEP" && for set in builtin fsdd-theo; do for recipe in early late progressive; do
        echo runs/$set/$recipe/best.ckpt runs/$set/$recipe/metrics.json runs/$set/$recipe/config.yaml; done; done)
}

evaluate_gpu() {
  for set in builtin fsdd-theo; do
    runs=$SWEEP/runs/$set/early,$SWEEP/runs/$set/late,$SWEEP/runs/$set/progressive
    extra=()
    [[ $set == fsdd-theo ]] && extra=(data.manifest="$PWD/$SWEEP/manifests/fsdd-theo/manifest.csv")
    "$PY" evaluate.py ckpt="$runs" "${extra[@]}" out_dir="$OUT/eval_gpu_$set" device=cuda \
      variants=fp32,bf16,compile iters="${EVAL_ITERS:-300}" batch_sizes=64,256,1024 robustness=false \
      2>&1 | grep --line-buffered -v "^W1\|^W0\|torch._dynamo" > "$OUT/eval_gpu_$set.log"
  done
}

case $STAGE in
  train)
    fusion_sweep &
    wait
    ;;
  measure)
    evaluate_gpu
    ;;
  *) echo "unknown stage '$STAGE' (train | measure)"; exit 2 ;;
esac
ls -la "$OUT"
