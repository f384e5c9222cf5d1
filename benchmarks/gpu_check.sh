#!/usr/bin/env bash
# Every GPU check in one run, for a session lent a one-GPU machine (see BENCHMARKS.md). Run from the
# repo root there, with .whl/ (../shared/device/make-ray-wheels.sh plus pydantic's wheels) and
# .devdata/tinyshakespeare.txt carried; logs go to $OUT (or ./gpu-out).
#   1. raylm end to end on the GPU: prepare, pretrain DDP (bf16, NCCL), FSDP2, resume, evaluate
#   2. MFU of GPT-2 124M (benchmarks/train_throughput.py), eager and compiled
#   3. Ray Train's per-step overhead on the GPU (benchmarks/ray_overhead.py --gpu)
#   4. raylm plan's memory estimate against torch.cuda.max_memory_allocated (benchmarks/plan_memory.py --gpu)
# Arguments pick sections (e2e, mfu, overhead, plan); none runs all four.
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p ../shared/data && cp .devdata/tinyshakespeare.txt ../shared/data/
# The carried Ray lacks its dashboard's dependencies (ray[default]), and raylm asks for the dashboard
# when it trains; this wrapper runs raylm with the dashboard off (Ray Train then cannot free a
# finished run's placement group through the State API, which only matters to Tune sweeps).
cat > /tmp/raylm_nodash.py <<'PY'
import sys
import raylm.runtime as runtime
_init = runtime.init_ray
runtime.init_ray = lambda address=None, num_cpus=None, dashboard=True: _init(address, num_cpus, False)
from raylm.cli import main
sys.exit(main(sys.argv[1:]))
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, ray; print('torch', torch.__version__, 'ray', ray.__version__, torch.cuda.get_device_name())"
parts=${*:-e2e mfu overhead plan}
w=/tmp/raylm-gpu; rm -rf $w/runs
step() { echo "=== $1"; shift; /usr/bin/time -f "(%e s)" "$@" 2>&1 | tee -a "$OUT/e2e.log" | grep -v "^\s*$" | tail -n 12; }
if [[ $parts == *e2e* ]]; then
[ -f $w/data/manifest.json ] || step prepare python3 -m raylm prepare data.output=$w/data data.tokenizer.vocab_size=4096 data.seq_len=256 \
  data.dedup.near=false data.dedup.exact=false   # the default corpus: this machine's Python standard library
common="train.data=$w/data train.storage=$w/runs train.use_gpu=true train.workers=1 train.cpus_per_worker=4 \
  model.preset=gpt2-124m train.batch_size=32 train.log_every=20 train.eval_every=100 train.checkpoint_every=100"
step "pretrain ddp" python3 /tmp/raylm_nodash.py pretrain $common train.name=ddp train.max_steps=200
step "pretrain fsdp" python3 /tmp/raylm_nodash.py pretrain $common train.name=fsdp train.strategy=fsdp train.max_steps=100
step "resume fsdp to 200" python3 /tmp/raylm_nodash.py pretrain $common train.name=fsdp train.strategy=fsdp train.max_steps=200
step "evaluate fsdp run" python3 -m raylm evaluate --checkpoint $w/runs/fsdp
fi
if [[ $parts == *mfu* ]]; then
echo "=== MFU"
python3 benchmarks/train_throughput.py --preset gpt2-124m --seq 1024 --batch 16 2>&1 | tail -n 2 | tee -a "$OUT/mfu.log"
python3 benchmarks/train_throughput.py --preset gpt2-124m --seq 1024 --batch 16 --compile 2>&1 | tail -n 2 | tee -a "$OUT/mfu.log"
python3 benchmarks/train_throughput.py --preset gpt2-124m --seq 1024 --batch 32 --compile 2>&1 | tail -n 2 | tee -a "$OUT/mfu.log"
# the chunked linear + cross-entropy (train.loss_chunk_rows): time and peak memory against the lines above
python3 benchmarks/train_throughput.py --preset gpt2-124m --seq 1024 --batch 16 --compile --loss-chunk-rows 4096 2>&1 | tail -n 2 | tee -a "$OUT/mfu.log"
python3 benchmarks/train_throughput.py --preset gpt2-124m --seq 1024 --batch 32 --compile --loss-chunk-rows 4096 2>&1 | tail -n 2 | tee -a "$OUT/mfu.log"
fi
if [[ $parts == *overhead* ]]; then
echo "=== Ray Train overhead"
python3 benchmarks/ray_overhead.py --gpu --preset gpt2-124m --seq 1024 --batch 16 --steps 200 --warmup 20 --rounds 2 2>&1 \
  | tail -n 6 | tee "$OUT/overhead.log"
fi
if [[ $parts == *plan* ]]; then
echo "=== raylm plan memory"
python3 benchmarks/plan_memory.py --gpu 2>&1 | tail -n 4 | tee "$OUT/plan.log"
fi
