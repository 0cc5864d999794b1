#!/usr/bin/env bash
# One prepared session on a lent GPU machine (see docs/benchmarks.md). It expects the
# wheels sslmed needs beyond that machine's image in .whl/ and the real data (images
# downscaled to 128 px, which the 28-64 px runs below never exceed) in .gpu_data/.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD SSLMED_DATA=$PWD/.gpu_data
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, lightning, lightly; print('torch', torch.__version__, 'lightning', lightning.__version__, 'lightly', lightly.__version__)" | tee -a "$OUT/gpu.txt"
start=$(date +%s)
timeout 150 python3 bench/throughput.py --device cuda --image-size 64 --batch-size 256 --steps 30 --warmup 5 --rounds 3 --workers 8 --out "$OUT/throughput_gpu.json" > "$OUT/throughput_gpu.log" 2>&1
echo "throughput: $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"; tail -20 "$OUT/throughput_gpu.log"
start=$(date +%s)
timeout 200 python3 -m sslmed.app.cli run recipes/pneumoniamnist.yaml --runs-dir "$OUT/runs" \
  --set steps.0.epochs=15 --set steps.0.num_workers=8 --set steps.0.accelerator=gpu > "$OUT/pneumoniamnist.log" 2>&1
echo "pneumoniamnist: $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"; tail -12 "$OUT/pneumoniamnist.log"
find "$OUT/runs" -name "*.ckpt" -delete; find "$OUT/runs" -name "*.safetensors" -delete
