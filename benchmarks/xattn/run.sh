#!/usr/bin/env bash
# Cross-attention fusion against early, late and progressive fusion (benchmarks/xattn/README.md):
#
#   bash benchmarks/xattn/run.sh OUT
#
# 1. builds the spatial-question task (fusion/data/grid_digits.py) from $REALDATA/mnist, and its spoken variant
#    with $REALDATA/fsdd/recordings, under datasets/;
# 2. trains every fusion kind on it with the same encoders (image side 64) and epochs, three xattn variants
#    (lower learning rate everywhere, 3 blocks, decision gate), and progressive and xattn on the built-in digits
#    with the default recipes (`python train.py recipe=...`), through benchmarks/sweep.py (a manifest is built only
#    when a row to run uses it);
# 3. writes OUT/results.md|json (the table), OUT/sweep.log, OUT/by_question.json (test accuracy per question
#    kind) and OUT/attention_maps.tar (predict.py attention_maps= pictures of the grid xattn run).
# Settings (environment): EPOCHS (grid task, 15), ROWS / TEST_ROWS (grid rows, 20000 / 2000), SEEDS ("0"),
# JOBS (runs at a time, 8), THREADS (per run, 2), ROWS_FILTER (regex of sweep rows to run, default all),
# SWEEP_SECONDS (stop launching and waiting after this long; finished runs are still tabulated), PY.
set -euo pipefail
USAGE="usage: run.sh OUT"
OUT=$(mkdir -p "${1:?$USAGE}" && cd "$1" && pwd)
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
REALDATA=$(cd "${REALDATA:-../shared/data}" && pwd)
EPOCHS=${EPOCHS:-15}
ROWS=${ROWS:-20000}
TEST_ROWS=${TEST_ROWS:-2000}
SWEEP=${SWEEP:-checkpoints/sweeps/xattn}
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpus.txt" 2>/dev/null || true

grid() {  # manifest name, extra builder overrides: builds it once (when a row to run uses it)
  local path=$PWD/datasets/$1-$ROWS/manifest.csv
  [[ -f $path ]] || "$PY" -m fusion.commands.manifest builder=grid_digits builder.images="$REALDATA/mnist" \
    builder.rows="$ROWS" builder.test_rows="$TEST_ROWS" builder.out="$path" "${@:2}" >&2
}
GRID=$PWD/datasets/grid_digits-$ROWS/manifest.csv  # half the reference digits in words ("the seven"): the first task
SPOKEN=$PWD/datasets/grid_digits_spoken-$ROWS/manifest.csv
NUMERALS=$PWD/datasets/grid_digits_numerals-$ROWS/manifest.csv  # the builder's default: every reference digit a numeral

SAME=(model.encoders.image.image_size=64 trainer.max_epochs="$EPOCHS")
rows=()
for recipe in early late progressive xattn; do
  rows+=(--run "grid/$recipe" recipe=$recipe data.manifest="$GRID" "${SAME[@]}")
done
rows+=(--run grid/xattn-lr5e-4 recipe=xattn data.manifest="$GRID" "${SAME[@]}" model.lr=0.0005 model.fusion.block_lr_scale=1
       --run grid/xattn-3layers recipe=xattn data.manifest="$GRID" "${SAME[@]}" model.fusion.num_layers=3
       --run grid/xattn-decision recipe=xattn data.manifest="$GRID" "${SAME[@]}" model.fusion.decision_gate=true)
# without modality dropout (a grid row shown without its question, or the question without the grid, cannot be
# answered), at three learning rates of the co-attention blocks
rows+=(--run grid/xattn-nodrop recipe=xattn data.manifest="$GRID" "${SAME[@]}" model.modality_dropout=0
       --run grid/xattn-lr5e-4-nodrop recipe=xattn data.manifest="$GRID" "${SAME[@]}" model.modality_dropout=0 model.lr=0.0005 model.fusion.block_lr_scale=1
       --run grid/xattn-lr1e-3-nodrop recipe=xattn data.manifest="$GRID" "${SAME[@]}" model.modality_dropout=0 model.lr=0.001 model.fusion.block_lr_scale=0.5)
rows+=(--run grid-numerals/xattn-nodrop recipe=xattn data.manifest="$NUMERALS" "${SAME[@]}" model.modality_dropout=0
       --run grid-numerals/xattn-lr5e-4-nodrop recipe=xattn data.manifest="$NUMERALS" "${SAME[@]}" model.modality_dropout=0 model.lr=0.0005 model.fusion.block_lr_scale=1)
# recipe=xattn_grid is the row above (its defaults: 20 epochs, lr 5e-4, no modality dropout, image side 64); the
# other fusion kinds with the same settings
rows+=(--run grid-numerals/xattn_grid recipe=xattn_grid data.manifest="$NUMERALS" trainer.max_epochs="$EPOCHS")
for recipe in early late progressive; do
  rows+=(--run "grid-numerals/$recipe" recipe=$recipe data.manifest="$NUMERALS" "${SAME[@]}" model.modality_dropout=0 model.lr=0.0005)
done
for recipe in progressive xattn; do
  rows+=(--run "grid-spoken/$recipe" recipe=$recipe data.manifest="$SPOKEN" "${SAME[@]}"
         --run "builtin/$recipe" recipe=$recipe)
done
rows+=(--run builtin/xattn-decision recipe=xattn model.fusion.decision_gate=true)
if [[ -n ${ROWS_FILTER:-} ]]; then  # keep only the rows whose name matches
  kept=(); keep=0
  for arg in "${rows[@]}"; do
    if [[ $arg == --run ]]; then continue; fi
    if [[ $arg != *=* ]]; then keep=0; [[ $arg =~ $ROWS_FILTER ]] && keep=1 && kept+=(--run); fi
    ((keep)) && kept+=("$arg")
  done
  rows=("${kept[@]}")
fi
used() { [[ " ${rows[*]} " == *"data.manifest=$1 "* ]]; }
if used "$GRID"; then grid grid_digits builder.words=0.5; fi
if used "$SPOKEN"; then grid grid_digits_spoken builder.audio="$REALDATA/fsdd/recordings" builder.words=0.5; fi
if used "$NUMERALS"; then grid grid_digits_numerals; fi
${SWEEP_SECONDS:+timeout "$SWEEP_SECONDS"} "$PY" benchmarks/sweep.py --out "$SWEEP" --jobs "${JOBS:-8}" --threads "${THREADS:-2}" --gpus "$GPUS" \
  --seeds ${SEEDS:-0} "${rows[@]}" > "$OUT/sweep.log" 2>&1 || true
"$PY" benchmarks/sweep.py --out "$SWEEP" --report > /dev/null
cp "$SWEEP/results.md" "$SWEEP/results.json" "$OUT/"
"$PY" benchmarks/xattn/by_question.py "$SWEEP" > "$OUT/by_question.json" 2>> "$OUT/sweep.log" || true
for pair in "grid-numerals/xattn_grid:$NUMERALS" "grid/xattn:$GRID"; do  # attention maps of the first that ran
  XATTN=$(ls -d "$SWEEP/${pair%%:*}"/seed*/ 2>/dev/null | head -1 || true)
  [[ -n $XATTN && -f $XATTN/best.ckpt ]] || continue
  MANIFEST=${pair#*:}
  TEST=$(dirname "$MANIFEST")/test.csv  # the test rows only, beside the images their relative paths name
  grep -E '^(split|test),' "$MANIFEST" > "$TEST"
  "$PY" predict.py run="$XATTN" data.manifest="$TEST" attention_maps=24 out="$OUT/maps" >> "$OUT/sweep.log" 2>&1 || true
  [[ -d $OUT/maps/attention ]] && tar -C "$OUT/maps" -cf "$OUT/attention_maps.tar" attention && rm -rf "$OUT/maps"
  break
done
