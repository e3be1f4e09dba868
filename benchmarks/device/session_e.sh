#!/usr/bin/env bash
# Device session E (issue 24, the four rows session D's call did not re-measure), ONE H200, one call:
#  1. DisTrO `measure` stage end to end on GPT-124M captures (benchmarks/distro_measure_gpu.py);
#  2. DeMo compression + decoding vs the Muon step, both CUDA chunk products (benchmarks/compressor.py);
#  3. the stacked nGPT projection vs one matrix at a time (CUDA events);
#  4. gpt-124m alone, ngpt-124m alone (+ profile), 4 x ngpt-124m sharing the GPU, 32 x 1024 per step (2 micro-batches
#     of 16, deterministic, rank check every 10: the nGPT study's runs),
#     compile, Muon, projection every step (benchmarks/train_throughput.py), all in this call.
# Run from a copy of the worktree holding data/kernel_docs.jsonl.xz: bash benchmarks/device/session_e.sh
set -u
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True TORCHINDUCTOR_COMPILE_THREADS=4
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOG=$OUT/session_e.log
nvidia-smi -L | tee -a "$LOG"; nproc | tee -a "$LOG"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee -a "$LOG"
echo "== 1 distro measure at ${SECONDS}s" | tee -a "$LOG"
timeout 170 python3 benchmarks/distro_measure_gpu.py --text data/kernel_docs.jsonl.xz --steps 20 --capture-steps 10 20 \
  --out "$OUT/distro_measure_h200_issue24_s2.json" 2>&1 | tee -a "$LOG" | tail -6
echo "== 2 compressor at ${SECONDS}s" | tee -a "$LOG"
timeout 120 python3 benchmarks/compressor.py --dct-matmuls bmm,mm --out "$OUT/compressor_h200_issue24_s2.json" 2>&1 \
  | tee -a "$LOG" | tail -16
echo "== 3 projection at ${SECONDS}s" | tee -a "$LOG"
timeout 60 python3 - <<'PY' 2>&1 | tee -a "$LOG"
import json, statistics, torch
from trainer.model import build_model
m = build_model("ngpt-124m").cuda()
def t(k):
    m.STACK_AT_LEAST = k
    for _ in range(3): m.normalize_weights()
    out = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); m.normalize_weights(); b.record(); b.synchronize(); out.append(a.elapsed_time(b))
    return statistics.median(out)
r = {"per_matrix_ms": t(10**9), "stacked_ms": t(3), "per_matrix_ms_again": t(10**9), "stacked_ms_again": t(3)}
import os; json.dump(r, open(os.environ["OUT"] + "/projection.json", "w")); print(r)
PY
echo "== 4 throughput at ${SECONDS}s" | tee -a "$LOG"
TT="python3 benchmarks/train_throughput.py --global-batch 32 --micro-batch 16 --optimizers Muon --warmup 3"
timeout 150 $TT --model gpt-124m --steps 12 --out /tmp/tt_gpt.json 2>&1 | tee -a "$LOG" | tail -3
timeout 150 $TT --model ngpt-124m --steps 12 --profile-steps 3 --out /tmp/tt_ngpt_alone.json 2>&1 | tee -a "$LOG" | tail -3
echo "== 4b four sharing at ${SECONDS}s" | tee -a "$LOG"
rm -rf /tmp/bar4
for i in 1 2 3 4; do
  timeout 200 $TT --model ngpt-124m --steps 20 --barrier /tmp/bar4:4 --out /tmp/tt_ngpt_shared$i.json > /tmp/tt_shared$i.log 2>&1 &
done
wait
tail -n 2 /tmp/tt_shared*.log | tee -a "$LOG"
python3 - <<'PY' 2>&1 | tee -a "$LOG"
import glob, json, os
from trainer.records import write_json
g = json.load(open("/tmp/tt_gpt.json")) if os.path.exists("/tmp/tt_gpt.json") else None
n = json.load(open("/tmp/tt_ngpt_alone.json")) if os.path.exists("/tmp/tt_ngpt_alone.json") else None
sh = [json.load(open(f)) for f in sorted(glob.glob("/tmp/tt_ngpt_shared*.json"))]
res = {"benchmark": "train_throughput (issue 24, session E)", "gpt_alone": g, "ngpt_alone": n, "ngpt_shared": sh}
s = {}
if g and n:
    G, N = g["optimizers"]["Muon"], n["optimizers"]["Muon"]
    s["ngpt_over_gpt_tokens"] = N["tokens_per_s"] / G["tokens_per_s"]
    s["ngpt_over_gpt_steady_tokens"] = N["steady_tokens_per_s"] / G["steady_tokens_per_s"]
    s["flops_per_token_ratio_gpt_over_ngpt"] = g["flops_per_token"] / n["flops_per_token"]
if n and sh:
    agg = sum(x["optimizers"]["Muon"]["tokens_per_s"] for x in sh)
    s["shared_aggregate_tokens_per_s"], s["shared_processes"] = agg, len(sh)
    s["alone_over_shared_aggregate"] = n["optimizers"]["Muon"]["tokens_per_s"] / agg
res["summary"] = s
write_json(os.environ["OUT"] + "/train_throughput_h200_issue24_s2.json", res)
print(json.dumps(s, indent=1))
PY
echo "== 5 GPU tests at ${SECONDS}s" | tee -a "$LOG"
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_distro_measure.py tests/test_optim_demo.py \
  -k "gpu or cuda" 2>&1 | tail -3 | tee -a "$LOG"
echo "== done at ${SECONDS}s" | tee -a "$LOG"
