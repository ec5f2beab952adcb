#!/usr/bin/env bash
# MNIST + FSDD speaker-disjoint fusion sweep on one GPU host (4 GPUs, 64 CPU cores), benchmarks/fusion/README.md:
#
#   bash benchmarks/fusion/gpu_sweep.sh crossfit OUT   # every test speaker (+ degraded theo), seeds 0 and 1:
#                                                      # progressive, progressive + cross-fitted gate, image only
#   bash benchmarks/fusion/gpu_sweep.sh evalruns OUT   # seed 0 early/late/progressive on built-in and theo, the
#                                                      # runs benchmarks/latency/ evaluates
#
# Manifests are built by `python -m fusion.commands.manifest builder=pair_digits` from $REALDATA (default
# ../shared/data: mnist/ and fsdd/recordings/); runs by benchmarks/sweep.py under checkpoints/sweeps/; OUT gets
# results.md/results.json, and for crossfit every run's metrics.json in one file plus the test and out-of-fold
# decisions of the fusion runs (benchmarks/fusion/dump_decisions.py, input of crossfit_stacker.py).
set -euo pipefail
USAGE="usage: gpu_sweep.sh crossfit|evalruns OUT"
STAGE=${1:?$USAGE}
OUT=$(mkdir -p "${2:?$USAGE}" && cd "$2" && pwd)
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
REALDATA=$(cd "${REALDATA:-../shared/data}" && pwd)
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
MANIFESTS=checkpoints/sweeps/manifests
REAL=(model.encoders.image.width=32 model.encoders.audio.width=32 trainer.max_epochs=25)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpus.txt" 2>/dev/null || true

manifest() {  # test speaker, degrade level -> manifest path (built once)
  local name=fsdd-$1$([[ $2 != 0 ]] && echo -degraded)
  local path=$PWD/$MANIFESTS/$name/manifest.csv
  [[ -f $path ]] || "$PY" -m fusion.commands.manifest builder=pair_digits builder.images="$REALDATA/mnist" \
    builder.audio="$REALDATA/fsdd/recordings" builder.test_speaker="$1" builder.degrade="$2" \
    builder.images_per_recording=3 builder.out="$path" >&2
  echo "$path"
}

case $STAGE in
  crossfit)
    SWEEP=${SWEEP:-checkpoints/sweeps/crossfit}
    rows=()
    for split in jackson:0 nicolas:0 theo:0 yweweler:0 theo:0.35; do
      m=$(manifest "${split%%:*}" "${split##*:}")
      name=$(basename "$(dirname "$m")")
      rows+=(--run "$name/progressive" recipe=progressive data.manifest="$m" "${REAL[@]}"
             --run "$name/progressive-xfit" recipe=progressive data.manifest="$m" "${REAL[@]}"
               model.fusion.decision_gate_inputs=confidence cross_fit.folds=3 data.num_workers=3
             --run "$name/image_only" recipe=late data.manifest="$m" "${REAL[@]}" "data.modalities=[image]"
               data.on_error=skip)
    done
    timeout "${SWEEP_SECONDS:-560}" "$PY" benchmarks/sweep.py --out "$SWEEP" --jobs 30 --threads 2 --gpus "$GPUS" \
      --seeds 0 1 "${rows[@]}" > "$OUT/crossfit.log" 2>&1 || true
    "$PY" benchmarks/sweep.py --out "$SWEEP" --report > /dev/null
    cp "$SWEEP/results.md" "$SWEEP/results.json" "$OUT/"
    "$PY" -c "import json, pathlib, sys; root = pathlib.Path(sys.argv[1]); print(json.dumps({str(p.parent.relative_to(root)): json.loads(p.read_text()) for p in sorted(root.glob('*/*/seed*/metrics.json'))}, indent=1))" \
      "$SWEEP" > "$OUT/crossfit_metrics.json"
    "$PY" benchmarks/fusion/dump_decisions.py --jobs 5 --out "$OUT/crossfit_decisions.pt" \
      $(ls -d "$SWEEP"/*/progressive*/seed*/ | while read -r d; do [[ -f $d/best.ckpt && -f $d/metrics.json ]] && echo "$d"; done) \
      > "$OUT/dump_decisions.log" 2>&1
    ;;
  evalruns)
    SWEEP=${SWEEP:-checkpoints/sweeps/evalruns}
    m=$(manifest theo 0)
    rows=()
    for recipe in early late progressive; do
      rows+=(--run "builtin/$recipe" recipe=$recipe --run "fsdd-theo/$recipe" recipe=$recipe data.manifest="$m" "${REAL[@]}")
    done
    "$PY" benchmarks/sweep.py --out "$SWEEP" --jobs 6 --threads 4 --gpus "$GPUS" --seeds 0 "${rows[@]}" \
      > "$OUT/evalruns.log" 2>&1
    cp "$SWEEP/results.md" "$SWEEP/results.json" "$OUT/"
    ;;
  *) echo "unknown stage '$STAGE' (crossfit | evalruns)"; exit 2 ;;
esac
