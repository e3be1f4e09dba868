#!/usr/bin/env bash
# Device session, part B (after part A, on the same 2-GPU machine): GPU 0 measures the deterministic
# mode (issue 15); GPU 1 the 350M optimizer step and the one-GPU throughput that the two-GPU runs compare
# with; then both GPUs: the DisTrO arms on NCCL and the two-GPU throughput (issue 13).
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
start=$(date +%s)
TT="--global-batch 256 --micro-batch 32 --steps 6 --warmup 2 --compile false --data /tmp/stdlib_corpus"
(
  export CUDA_VISIBLE_DEVICES=0
  timeout 300 python3 benchmarks/deterministic.py --out "$OUT/deterministic.json" > "$OUT/det.log" 2>&1
  echo "deterministic rc=$? at $(( $(date +%s) - start )) s" >> "$OUT/det.log"
) &
(
  export CUDA_VISIBLE_DEVICES=1
  b="$OUT/bench_b.log"
  timeout 150 python3 benchmarks/optimizer_step.py --sizes 350m --quick --rank-workers 15 --out "$OUT/optimizer_step_350m.json" > "$b" 2>&1
  echo "optimizer_step 350m rc=$? at $(( $(date +%s) - start )) s" >> "$b"
  timeout 80 python3 benchmarks/train_throughput.py --model gpt-124m --optimizers Muon,MuonOrthoNoise $TT --out /tmp/tt1_gpt.json >> "$b" 2>&1
  echo "throughput 1 gpu gpt rc=$?" >> "$b"
  timeout 60 python3 benchmarks/train_throughput.py --model ngpt-124m --optimizers Muon $TT --out /tmp/tt1_ngpt.json >> "$b" 2>&1
  echo "throughput 1 gpu ngpt rc=$? at $(( $(date +%s) - start )) s" >> "$b"
) &
wait
b="$OUT/bench_2gpu.log"
timeout 130 torchrun --standalone --nproc-per-node 2 benchmarks/compressor.py --distributed --out "$OUT/compressor_2gpu.json" > "$b" 2>&1
echo "compressor 2 gpus rc=$? at $(( $(date +%s) - start )) s" >> "$b"
timeout 70 torchrun --standalone --nproc-per-node 2 benchmarks/train_throughput.py --model gpt-124m --optimizers Muon,MuonOrthoNoise $TT --compare /tmp/tt1_gpt.json --out "$OUT/throughput_2gpu_gpt.json" >> "$b" 2>&1
echo "throughput 2 gpus gpt rc=$?" >> "$b"
timeout 50 torchrun --standalone --nproc-per-node 2 benchmarks/train_throughput.py --model ngpt-124m --optimizers Muon $TT --compare /tmp/tt1_ngpt.json --out "$OUT/throughput_2gpu_ngpt.json" >> "$b" 2>&1
echo "throughput 2 gpus ngpt rc=$? at $(( $(date +%s) - start )) s" >> "$b"
cp /tmp/tt1_gpt.json "$OUT/throughput_1gpu_gpt.json" 2>/dev/null; cp /tmp/tt1_ngpt.json "$OUT/throughput_1gpu_ngpt.json" 2>/dev/null
echo "session B done after $(( $(date +%s) - start )) s" >> "$b"
cat "$OUT/det.log" "$OUT/bench_b.log" "$b" > /tmp/session_b.log && rm -f "$OUT/det.log" "$OUT/bench_b.log" "$b" \
  && mv /tmp/session_b.log "$OUT/session_b.log"  # at most 8 files come back
tail -40 "$OUT/session_b.log"
