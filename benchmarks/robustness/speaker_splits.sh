#!/usr/bin/env bash
# The gate's promise on MNIST + FSDD, speaker-disjoint: each given speaker held out once, two seeds, every row
# with the same epochs (EPOCHS, default 20). Trains, evaluates (robustness report per fusion run) and tabulates:
#   benchmarks/robustness/speaker_splits.sh OUT DATA SPEAKER... (DATA holds mnist/ and fsdd/, e.g. ../shared/data)
# SEEDS (default "0 1"); COMMON: more train.py overrides for every row (e.g. model.train_step=graph);
# JOBS runs at a time (default 2); GPUS spreads them over that many GPUs (default 0: as the trainer picks);
# TRAIN_SECONDS stops each training phase after that long (default 0: no limit), evaluating what finished.
set -euo pipefail
OUT=$(realpath -m "$1"); DATA=$(realpath "$2"); shift 2
JOBS=${JOBS:-2}; GPUS=${GPUS:-0}; EPOCHS=${EPOCHS:-20}; SEEDS=${SEEDS:-0 1}; COMMON=${COMMON:-}; PYTHON=${PYTHON:-python}; LIMIT="timeout ${TRAIN_SECONDS:-0}"
cd "$(dirname "$0")/../.."
build() {  # speaker, out, extra builder overrides
  $PYTHON -m fusion.commands.manifest builder=pair_digits builder.images="$DATA/mnist" \
    builder.audio="$DATA/fsdd/recordings" builder.test_speaker="$1" builder.out="$2" "${@:3}"
}
rows=()
for s in "$@"; do
  clean=$OUT/data/$s/manifest.csv; degraded=$OUT/data/${s}_degraded/manifest.csv
  [ -f "$clean" ] || build "$s" "$clean"
  [ -f "$degraded" ] || build "$s" "$degraded" builder.degrade=0.35
  m="data.manifest=$clean"
  rows+=(--run "$s/early" recipe=early "$m" --run "$s/late" recipe=late "$m" --run "$s/progressive" recipe=progressive "$m"
         --run "$s/progressive_no_corruption" recipe=progressive "$m" model.corruption.p=0
         --run "$s/image_only" recipe=progressive "$m" "data.modalities=[image]" model.corruption.p=0
         --run "$s/audio_only" recipe=progressive "$m" "data.modalities=[audio]" model.corruption.p=0
         --run "$s/progressive_degraded" recipe=progressive "data.manifest=$degraded")
done
$LIMIT $PYTHON benchmarks/sweep.py --out "$OUT/runs" --jobs "$JOBS" --gpus "$GPUS" --seeds $SEEDS "${rows[@]}" \
  --common "trainer.max_epochs=$EPOCHS" $COMMON || true
device=cpu; if [ "$GPUS" != 0 ]; then device=cuda; fi
for s in "$@"; do for row in early late progressive progressive_no_corruption; do
  for seed in $SEEDS; do
    run=$OUT/runs/$s/$row/seed$seed
    if [ -f "$run/metrics.json" ] && [ ! -f "$run/report.json" ]; then echo "$run"; fi
  done
done; done | xargs -r -P "$JOBS" -I{} sh -c "$PYTHON evaluate.py run={} variants=[fp32] 'device=[$device]' warmup=2 iters=10 \
  'batch_sizes=[64]' > {}/evaluate.log 2>&1 || echo 'evaluate failed: {}'"
$PYTHON benchmarks/robustness/summarize.py "$OUT/runs" --out "$OUT"
