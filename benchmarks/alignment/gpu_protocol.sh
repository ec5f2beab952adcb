#!/usr/bin/env bash
# Alignment acceptance protocol on one GPU (about 6 minutes on one H100 with 16 CPU cores).
#
#   benchmarks/alignment/gpu_protocol.sh OUT
#
# Trains and tests, with independent trainings running at the same time:
#   1. recipe=clip on the built-in digits set (audio->image class R1 target >= 0.95);
#   2. recipe=clip on the MNIST+FSDD+captions manifest (test speaker never seen in training);
#   3. the supervised audio-only classifier on the same split (the audio->image baseline);
#   4. progressive fusion on image+audio, from scratch and seeded with the aligned towers (init_from),
#      on both data sets (learning curves per epoch).
# Everything lands in OUT: one run folder per training (logs/metrics.csv, metrics.json, config.yaml) and
# OUT/summary.json (benchmarks/alignment/gpu_summary.py) with the acceptance numbers. Checkpoints are deleted at
# the end unless KEEP_CKPT=1.
#
# Real data: $FUSION_REALDATA (default: .devdata if it holds mnist/ and fsdd/, else ../shared/data).
# Knobs (environment): PYTHON, CLIP_EPOCHS, CLIP_MF_EPOCHS, AUDIO_EPOCHS, FT_EPOCHS, CLIP_MAX_MIN,
# FT_MAX_MIN (fit-time caps in minutes), WORKERS, and EXTRA (overrides added to every training, e.g. for a
# quick check: EXTRA="+trainer.limit_train_batches=2 +trainer.limit_val_batches=1 +trainer.limit_test_batches=1").
set -euo pipefail

OUT=${1:?usage: benchmarks/alignment/gpu_protocol.sh OUT}
PY=${PYTHON:-python}
CLIP_EPOCHS=${CLIP_EPOCHS:-80}
CLIP_MF_EPOCHS=${CLIP_MF_EPOCHS:-80}
AUDIO_EPOCHS=${AUDIO_EPOCHS:-80}
FT_EPOCHS=${FT_EPOCHS:-12}
CLIP_MAX_MIN=${CLIP_MAX_MIN:-3.5}
FT_MAX_MIN=${FT_MAX_MIN:-1.2}
WORKERS=${WORKERS:-2}
EXTRA=${EXTRA:-}

if [ -z "${FUSION_REALDATA:-}" ]; then
    if [ -d .devdata/mnist ] && [ -d .devdata/fsdd ]; then FUSION_REALDATA=$PWD/.devdata; else FUSION_REALDATA=$(cd .. && pwd)/shared/data; fi
fi
export FUSION_REALDATA
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/../.."
MANIFEST=$OUT/mnist_fsdd_manifest.csv
START=$(date +%s)
stamp() { echo "[clip_gpu +$(( $(date +%s) - START ))s] $*"; }

# Training run: NAME then train.py overrides; output in $OUT/NAME (log in $OUT/NAME.log).
train() {
    local name=$1
    shift
    stamp "start $name"
    # shellcheck disable=SC2086
    "$PY" train.py "$@" data.num_workers="$WORKERS" trainer.enable_progress_bar=false \
        run_dir="$OUT/$name" $EXTRA >"$OUT/$name.log" 2>&1 \
        && stamp "done $name" || { stamp "FAILED $name (see $OUT/$name.log)"; tail -20 "$OUT/$name.log"; return 1; }
}

CLIP_CAP="+trainer.max_time={minutes:$CLIP_MAX_MIN}"
FT_CAP="+trainer.max_time={minutes:$FT_MAX_MIN}"
FT_COMMON=("recipe=progressive" "data.modalities=[audio,image]" "data.batch_size=64"
           "trainer.max_epochs=$FT_EPOCHS" "$FT_CAP")

# data: the built-in set is generated once (all runs then reuse it); the manifest pairs every FSDD
# recording with an MNIST image and a caption; FSDD speaker "theo" is the test split only
stamp "data from $FUSION_REALDATA"
{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"; echo "cpu cores: $(nproc)"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } >"$OUT/machine.txt" 2>&1
"$PY" -c "from fusion.data.builtin_digits import ensure_builtin_digits; print(ensure_builtin_digits())" &
prep=$!
"$PY" benchmarks/alignment/build_digits_manifest.py --out "$MANIFEST"
wait $prep

pids=()
# 1 + fusion fine-tune from the aligned built-in towers
( train clip_builtin recipe=clip data.batch_size=128 trainer.max_epochs="$CLIP_EPOCHS" "$CLIP_CAP" \
  && train ft_builtin_aligned "${FT_COMMON[@]}" init_from="$OUT/clip_builtin/best.ckpt" ) & pids+=($!)
# 2 + fusion fine-tune from the aligned MNIST+FSDD towers
( train clip_mnist_fsdd recipe=clip data.manifest="$MANIFEST" data.batch_size=64 \
    trainer.max_epochs="$CLIP_MF_EPOCHS" "$CLIP_CAP" \
  && train ft_mnist_fsdd_aligned "${FT_COMMON[@]}" data.manifest="$MANIFEST" \
    init_from="$OUT/clip_mnist_fsdd/best.ckpt" ) & pids+=($!)
# 3: supervised audio-only classifier, same audio tower and split
train audio_only_mnist_fsdd recipe=late "data.modalities=[audio]" model.modality_dropout=0.0 \
    data.manifest="$MANIFEST" data.batch_size=64 trainer.max_epochs="$AUDIO_EPOCHS" "$CLIP_CAP" & pids+=($!)
# 4: fusion from scratch (same settings as the fine-tunes)
train ft_builtin_scratch "${FT_COMMON[@]}" & pids+=($!)
train ft_mnist_fsdd_scratch "${FT_COMMON[@]}" data.manifest="$MANIFEST" & pids+=($!)

failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
"$PY" benchmarks/alignment/gpu_summary.py "$OUT" || failed=1
if [ "${KEEP_CKPT:-0}" != 1 ]; then find "$OUT" -name '*.ckpt' -delete; fi
echo "wall_seconds: $(( $(date +%s) - START ))" >>"$OUT/machine.txt"
stamp "finished (failed=$failed); summary: $OUT/summary.json"
exit $failed
