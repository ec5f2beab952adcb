#!/usr/bin/env bash
# GPU side of the accuracy-vs-latency benchmark: evaluates the run folders trained by benchmarks/latency/eval_cpu.sh
# on CUDA (fp32, bf16 autocast, torch.compile), from the test split cached next to each run
# (test_batches.pt, written by eval_cpu.sh), so the media files and audio/image decoders are not needed.
#
#   bash benchmarks/latency/eval_gpu.sh RESULTS_DIR        # reports go to RESULTS_DIR/<data set>/
#
# Needs the run folders (RUNS, default checkpoints/eval_bench). Hydra is imported by the classification task;
# when it is not installed, copies of hydra, omegaconf and antlr4 under .venv/lib/python3.11/site-packages
# (pure Python) are put on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
RESULTS=${1:?usage: eval_gpu.sh RESULTS_DIR}
PY=${PY:-python3}
RUNS=${RUNS:-checkpoints/eval_bench}
SETS=${SETS:-"builtin mnist_fsdd"}
ITERS=${ITERS:-500}
VARIANTS=${VARIANTS:-fp32,bf16,compile}
BATCH_SIZES=${BATCH_SIZES:-64,256,1024}

if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
  carried=$(ls -d .venv/lib/python3*/site-packages 2>/dev/null | head -1)
  [[ -n $carried ]] && export PYTHONPATH="$PWD/$carried${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - <<'PY'
import importlib
missing = []
for name in ("torch", "lightning", "torchmetrics", "torchaudio", "torchvision", "yaml", "hydra", "omegaconf", "matplotlib"):
    try:
        importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - report every missing package at once
        missing.append(f"{name} ({type(err).__name__}: {err})")
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
if missing:
    print("missing:", "; ".join(missing))
PY
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

for set in $SETS; do
  runs=()
  for recipe in early late progressive; do
    [[ -f $RUNS/$set/$recipe/test_batches.pt ]] && runs+=("$RUNS/$set/$recipe")
  done
  if [[ ${#runs[@]} -eq 0 ]]; then echo "no cached runs for $set under $RUNS"; continue; fi
  echo "== $set on GPU: ${runs[*]}"
  "$PY" evaluate.py run="[$(IFS=,; echo "${runs[*]}")]" out_dir="$RESULTS/$set" device=cuda from_cache=true \
    variants="[$VARIANTS]" iters="$ITERS" batch_sizes="[$BATCH_SIZES]" 2>&1 | grep --line-buffered -v "^W1\|^W0\|torch._dynamo"
done
