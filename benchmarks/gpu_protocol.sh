#!/usr/bin/env bash
# The GPU-host side of BENCHMARKS.md, in stages on one multi-GPU host (4 GPUs, 64 CPU cores):
#
#   bash benchmarks/gpu_protocol.sh train   OUT   # CPU/GPU-parallel trainings: fusion accuracy sweep,
#                                                # CLIP protocol, DDP accuracy protocol (2-process gloo runs)
#   bash benchmarks/gpu_protocol.sh measure OUT   # timings on a quiet host: evaluate.py on CUDA for the sweep's
#                                                # early/late/progressive runs, CRF benchmark, int8 hook profile
#   bash benchmarks/gpu_protocol.sh evalruns OUT  # only the runs the CPU evaluation needs, packed into OUT
#   bash benchmarks/gpu_protocol.sh scaling OUT   # DDP throughput and scaling on 1, 2 and 4 GPUs per hook
#   bash benchmarks/gpu_protocol.sh crossfit OUT  # progressive fusion with a cross-fitted decision gate vs
#                                                # image only, every speaker split, seeds 0 and 1
#
# Real data is read from $REALDATA (default .devdata: mnist/ and fsdd/recordings/ as in ../shared/data).
# Results go to OUT (JSON/markdown); run folders stay under checkpoints/ (git-ignored); `train` and `evalruns`
# also pack the run folders that the CPU evaluation needs into OUT/runs.tgz.part-* (best checkpoint, config,
# metrics, manifest; `cat runs.tgz.part-* | tar -xzf -`).
set -uo pipefail
USAGE="usage: gpu_protocol.sh train|evalruns|measure|scaling|crossfit OUT"
STAGE=${1:?$USAGE}
OUT=$(mkdir -p "${2:?$USAGE}" && cd "$2" && pwd)
cd "$(dirname "$0")/.."
PY=${PY:-python3}
REALDATA=${REALDATA:-$PWD/.devdata}
SWEEP=${SWEEP:-checkpoints/fusion_sweep}
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
export PYTHONUNBUFFERED=1 FUSION_REALDATA=$REALDATA
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpus.txt" 2>/dev/null || true

# data, output folder, GPUs and the MNIST + FSDD model size shared by the sweep and the evaluation runs
FUSION_COMMON=(--realdata "$REALDATA" --out "$SWEEP" --gpus "$GPUS" --real-epochs 25
               --real-extra model.encoders.image.width=32 model.encoders.audio.width=32)

fusion_sweep() {
  # built-in set: default recipes (6 epochs); MNIST + FSDD: width-32 encoders, 25 epochs; seed 1 repeats the
  # progressive rows and image-only (the comparison "fused >= best unimodal on every split" rests on them)
  timeout "${SWEEP_SECONDS:-530}" "$PY" benchmarks/fusion_accuracy.py "${FUSION_COMMON[@]}" \
    --jobs "${FUSION_JOBS:-26}" --threads 1 --speakers theo nicolas jackson yweweler \
    --seeds 0 1 --all-seeds-models progressive progressive-warp25 "image only" \
    --extra-models "progressive-warp25=recipe=progressive,model.encoders.audio.augment_args={warp:0.25}" \
    > "$OUT/fusion_sweep.log" 2>&1
  cp "$SWEEP/results.jsonl" "$OUT/fusion_sweep.jsonl"
  pack_eval_runs
}

pack_eval_runs() {
  # run folders for the CPU accuracy-vs-latency evaluation (seed 0, built-in and the theo split), in parts
  # below the 16 MiB a result file may have
  (cd "$SWEEP" && tar -czf /tmp/runs.tgz manifests/fsdd-theo/manifest.csv \
    runs/{builtin,fsdd-theo}/{early,late,progressive}/{best.ckpt,metrics.json,config.yaml} \
    && split -b 15M /tmp/runs.tgz "$OUT/runs.tgz.part-")
}

clip_protocol() {
  CUDA_VISIBLE_DEVICES=$((GPUS - 1)) PYTHON=$PY timeout "${CLIP_SECONDS:-540}" bash benchmarks/clip_gpu.sh \
    checkpoints/clip_gpu > "$OUT/clip_gpu.log" 2>&1
  cp checkpoints/clip_gpu/summary.json "$OUT/clip_gpu_summary.json"
}

ddp_accuracy() {
  # 2-process gloo runs on the host CPUs (no GPU): each hook variant x 4 seeds, all at once
  timeout "${DDP_SECONDS:-540}" "$PY" benchmarks/ddp_accuracy.py --out checkpoints/ddp_accuracy --jobs "${DDP_JOBS:-24}" \
    --seeds 0 1 2 3 > "$OUT/ddp_accuracy.log" 2>&1
  "$PY" benchmarks/ddp_accuracy.py --out checkpoints/ddp_accuracy --report > "$OUT/ddp_accuracy.md" 2>&1
  cp checkpoints/ddp_accuracy/results.json "$OUT/ddp_accuracy.json" 2>/dev/null
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
  evalruns)
    # only the six runs the accuracy-vs-latency evaluation needs (built-in and theo; early/late/progressive)
    "$PY" benchmarks/fusion_accuracy.py "${FUSION_COMMON[@]}" --jobs 6 --threads 4 \
      --speakers theo --degraded-speakers --only builtin fsdd-theo --models early late progressive \
      > "$OUT/evalruns.log" 2>&1
    cp "$SWEEP/results.jsonl" "$OUT/evalruns.jsonl"
    pack_eval_runs
    ;;
  train)
    fusion_sweep &
    clip_protocol &
    ddp_accuracy &
    wait
    ;;
  measure)
    parts=${MEASURE:-"crf profile eval"}
    if [[ $parts == *crf* ]]; then
      "$PY" benchmarks/crf_benchmark.py --device cuda --out "$OUT/crf_gpu.json" > "$OUT/crf_gpu.log" 2>&1
    fi
    if [[ $parts == *profile* ]]; then
      PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 \
        benchmarks/ddp_hook_profile.py --model progressive --device cuda --out "$OUT/ddp_hook_profile_cuda.json" \
        > "$OUT/ddp_hook_profile.log" 2>&1
    fi
    [[ $parts == *eval* ]] && evaluate_gpu
    ;;
  scaling)
    PYTHON=$PY bash benchmarks/ddp_gpu.sh checkpoints/ddp_gpu "${GPU_COUNTS:-1 2 4}" > "$OUT/ddp_gpu.log" 2>&1
    cp checkpoints/ddp_gpu/results.md "$OUT/ddp_gpu.md"
    (cd checkpoints/ddp_gpu && tar -czf "$OUT/ddp_gpu_json.tar.gz" ./*.json)
    ;;
  crossfit)
    # every speaker split (+ degraded theo), seeds 0 and 1: progressive fusion, progressive fusion with a
    # cross-fitted decision gate (3 speaker folds: 4 trainings, data loading in 3 workers) and image only; then
    # the test (and out-of-fold) decisions of the fusion runs, for offline analysis of the decision gate
    SWEEP=${SWEEP_CROSSFIT:-checkpoints/crossfit_sweep}
    FUSION_COMMON[3]=$SWEEP
    timeout "${SWEEP_SECONDS:-560}" "$PY" benchmarks/fusion_accuracy.py "${FUSION_COMMON[@]}" --jobs 30 --threads 2 \
      --speakers jackson nicolas theo yweweler --degraded-speakers theo --seeds 0 1 \
      --only fsdd-jackson fsdd-nicolas fsdd-theo fsdd-yweweler fsdd-theo-degraded \
      --models progressive progressive-xfit "image only" \
      --extra-models "progressive-xfit=recipe=progressive,model.fusion.decision_gate_inputs=confidence,cross_fit.folds=3,data.num_workers=3" \
      > "$OUT/crossfit.log" 2>&1
    cp "$SWEEP/results.jsonl" "$OUT/crossfit.jsonl"
    # every run's metrics.json (per-decision test accuracy, out-of-fold accuracies) in one file
    "$PY" -c "import json, pathlib, sys; root = pathlib.Path(sys.argv[1]); print(json.dumps({str(p.parent.relative_to(root)): json.loads(p.read_text()) for p in sorted(root.glob('runs/**/metrics.json'))}, indent=1))" \
      "$SWEEP" > "$OUT/crossfit_metrics.json"
    "$PY" benchmarks/dump_decisions.py --jobs 5 --out "$OUT/crossfit_decisions.pt" \
      $(ls -d "$SWEEP"/runs/*/progressive*/ | while read -r d; do [[ -f $d/best.ckpt && -f $d/metrics.json ]] && echo "$d"; done) \
      > "$OUT/dump_decisions.log" 2>&1
    ;;
  *) echo "unknown stage '$STAGE' (train | evalruns | measure | scaling | crossfit)"; exit 2 ;;
esac
# at most a handful of files: logs and report folders travel as archives
(cd "$OUT" && shopt -s nullglob && logs=(*.log) && [[ ${#logs[@]} -gt 0 ]] && tar -czf "logs-$STAGE.tar.gz" "${logs[@]}" && rm -f "${logs[@]}")
(cd "$OUT" && shopt -s nullglob && dirs=(eval_gpu_*/) && [[ ${#dirs[@]} -gt 0 ]] && tar -czf eval_gpu.tar.gz "${dirs[@]}" && rm -rf "${dirs[@]}")
ls -la "$OUT"
