#!/usr/bin/env bash
# Accuracy vs latency of early, late and progressive fusion on the CPU, on two data sets:
#   builtin    - the generated audio-visual-text digits set (default data of every recipe)
#   mnist_fsdd - MNIST images paired with FSDD spoken digits (image + audio; test = a held-out speaker),
#                built from ../shared/data by benchmarks/alignment/build_digits_manifest.py
# Trains the three recipes per data set (skipped when the run folder has metrics.json, i.e. training
# completed; an interrupted run is trained again from scratch), then writes one
# report per data set with evaluate.py, and stores the decoded test split next to each run
# (test_batches.pt) so benchmarks/latency/eval_gpu.sh can evaluate the same runs on a GPU machine without the media.
#
#   bash benchmarks/latency/eval_cpu.sh                 # everything
#   SETS=builtin EPOCHS_builtin=6 THREADS=2 bash benchmarks/latency/eval_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-checkpoints/eval_bench}
SETS=${SETS:-"builtin mnist_fsdd"}
EPOCHS_builtin=${EPOCHS_builtin:-5}        # 3000 training examples
EPOCHS_mnist_fsdd=${EPOCHS_mnist_fsdd:-6}  # 1359 training examples
# Encoder sizes of the evaluated models (the recipe defaults; BENCHMARKS.md uses width-32 MNIST+FSDD runs).
MODEL_ARGS=${MODEL_ARGS:-"model.encoders.image.width=16 model.encoders.audio.width=16"}
THREADS=${THREADS:-2}
ITERS=${ITERS:-200}
VARIANTS=${VARIANTS:-fp32,compile,int8}
export FUSION_DATASETS=${FUSION_DATASETS:-$PWD/datasets}

data_args() {
  case "$1" in
    builtin) echo "" ;;
    mnist_fsdd)
      local manifest=datasets/mnist_fsdd/manifest.csv
      [[ -f $manifest ]] || "$PY" benchmarks/alignment/build_digits_manifest.py --out "$manifest" >&2
      echo "data.manifest=$PWD/$manifest data.modalities=[image,audio]" ;;
    *) echo "unknown data set '$1' (builtin | mnist_fsdd)" >&2; exit 2 ;;
  esac
}

for set in $SETS; do
  args=$(data_args "$set")
  epochs_var=EPOCHS_$set
  epochs=${!epochs_var}
  runs=()
  for recipe in early late progressive; do
    run_dir=$OUT/$set/$recipe
    if [[ ! -f $run_dir/metrics.json ]]; then  # metrics.json is written when training completed
      echo "== training $recipe on $set ($epochs epochs) -> $run_dir"
      rm -rf "$run_dir"  # an interrupted run: start clean (ModelCheckpoint would not overwrite best.ckpt)
      # shellcheck disable=SC2086
      "$PY" train.py recipe=$recipe $args $MODEL_ARGS trainer.max_epochs=$epochs run_dir=$run_dir \
        trainer.enable_progress_bar=false 2>&1 | grep -E "run folder|test metrics|Error|error" || true
    fi
    runs+=("$run_dir")
  done
  echo "== evaluating $set"
  "$PY" evaluate.py run="[$(IFS=,; echo "${runs[*]}")]" out_dir="$OUT/$set/report_cpu" device=cpu \
    threads="$THREADS" iters="$ITERS" variants="[$VARIANTS]" cache_batches=true 2>&1 | grep --line-buffered -v "^W1\|^W0\|torch._dynamo"
done
