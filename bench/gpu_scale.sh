#!/usr/bin/env bash
# Every GPU row of issue 11 in one prepared run (see docs/benchmarks.md, "Pre-training
# at scale"). Results go under $OUT (default: bench/results/gpu-scale-<date>).
#   data path: loader vs training step at 64 px, batch 256; GPU utilisation of a real
#   corpus run; sslmed vs the hand-written loop; a profile of the data path + step;
#   the step with bf16 / channels-last / torch.compile / fused AdamW.
# Try it on a CPU with tiny settings:  DEVICE=cpu TINY=1 bash bench/gpu_scale.sh
set -u
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-bench/results/gpu-scale-$(date +%Y%m%d)}
WORKERS=${WORKERS:-14}
export PYTHONPATH=${PYTHONPATH:-$PWD} SSLMED_CACHE_DIR=${SSLMED_CACHE_DIR:-$OUT/cache}
mkdir -p "$OUT"
if [ "${TINY:-0}" = 1 ]; then
  SIZE=16 BATCH=16 ROUNDS=1 STEPS=2 BATCHES=2 CORPUS_STEPS=2 WORKERS=${WORKERS_TINY:-0} ACCEL=cpu
else
  SIZE=64 BATCH=256 ROUNDS=5 STEPS=20 BATCHES=20 CORPUS_STEPS=300 ACCEL=gpu
fi
PY=${PYTHON:-python3}
run() {  # name, timeout, command...
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: rc $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
  tail -5 "$OUT/$name.log"
}
{ date -u; uname -n; cat /proc/loadavg; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null; } | tee "$OUT/summary.txt"

# cold then warm image cache of cxr_corpus at the training size
run cache_cold 600 $PY -m sslmed.app.cli data cache recipes/simclr_multistep.yaml --step corpus --set defaults.image_size=$SIZE
run cache_warm 600 $PY -m sslmed.app.cli data cache recipes/simclr_multistep.yaml --step corpus --set defaults.image_size=$SIZE
# loader (cache + augmentation) vs training step, median of rounds; then the step's options one by one
run data_path 900 $PY bench/data_path.py --device $DEVICE --image-size $SIZE --batch-size $BATCH --workers $WORKERS \
  --rounds $ROUNDS --batches $BATCHES --steps $STEPS
for option in --bf16 --channels-last --fused "--bf16 --channels-last --fused" "--bf16 --channels-last --fused --compile"; do
  run "step_${option//[ -]/}" 600 $PY bench/data_path.py --device $DEVICE --image-size $SIZE --batch-size $BATCH \
    --workers $WORKERS --rounds $ROUNDS --batches 1 --steps $STEPS $option
done
run profile 300 $PY bench/data_path.py --device $DEVICE --image-size $SIZE --batch-size $BATCH --workers $WORKERS \
  --batches $BATCHES --profile "$OUT/profile"
# sslmed vs the hand-written lightly loop
run throughput 900 $PY bench/throughput.py --device $DEVICE --image-size $SIZE --batch-size $BATCH --steps $STEPS \
  --warmup 5 --rounds $ROUNDS --workers $WORKERS --out "$OUT/throughput.json"
# GPU utilisation during a real corpus run (cache + augmentation on the device)
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/gpu_util.csv" &
  SMI=$!
fi
run corpus_run 900 $PY -m sslmed.app.cli run recipes/simclr_multistep.yaml --runs-dir "$OUT/runs" \
  --set defaults.image_size=$SIZE --set defaults.batch_size=$BATCH --set defaults.num_workers=$WORKERS \
  --set defaults.accelerator=$ACCEL --set defaults.augment_on=device --set steps.0.max_steps=$CORPUS_STEPS \
  --set steps.1.max_steps=2 --set evaluation.baselines=[] --set evaluation.probes=[linear]
if [ -n "${SMI:-}" ]; then
  kill "$SMI"
  awk -F, 'NR > 20 { n++; s += $1; if ($1 >= 90) h++ } END { if (n) printf "gpu utilisation after warm-up: mean %.0f%%, >= 90%% in %.0f%% of samples\n", s / n, 100 * h / n }' \
    "$OUT/gpu_util.csv" | tee -a "$OUT/summary.txt"
fi
find "$OUT" -name "*.ckpt" -delete
rm -rf "$OUT/cache"  # the decoded images: large, and rebuilt in seconds
