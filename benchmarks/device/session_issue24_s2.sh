#!/usr/bin/env bash
# Issue 24, second session (branch wt-step), ONE H200: the fused Muon step (optim/triton_step.py) against the
# peers in the same run, the effective-rank candidates on the device, the CUDA tests, a kernel profile and
# (time permitting) GPT-124M tokens/s of OrthoNoise vs Muon. One call, each stage under its own timeout:
#   bash benchmarks/device/session_issue24_s2.sh peers      (peers/: the two peer files, benchmarks/peers.py)
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 WANDB_MODE=disabled
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PEERS=${1:-peers}
COMMITS="microsoft/dion@0a059a45 dion/newton_schulz_triton.py; KellerJordan/modded-nanogpt@f411b3d3 triton_kernels.py"
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
echo "=== step benchmark at ${SECONDS} s"
timeout 270 python3 benchmarks/optimizer_step.py --sizes 124m,350m --quick --no-pieces --rank-gpu --peers "$PEERS" \
  --peer-commits "$COMMITS" --out "$OUT/optimizer_step_h200_issue24_s2.json" > "$OUT/optimizer_step_log.txt" 2>&1
echo "rc=$? at ${SECONDS} s"; grep -E "FAILED|Error" "$OUT/optimizer_step_log.txt" | head -5
sed -n '/^optimizer step, ms/,$p' "$OUT/optimizer_step_log.txt"
echo "=== CUDA tests at ${SECONDS} s"
timeout 130 python3 -m pytest -x -q -p no:cacheprovider tests/test_optim_triton.py tests/test_optim_muon.py > "$OUT/pytest_gpu.txt" 2>&1
echo "rc=$?"; tail -4 "$OUT/pytest_gpu.txt"
echo "=== profile at ${SECONDS} s"
timeout 45 python3 benchmarks/profile_muon_step.py --size 124m --rows 14 > "$OUT/profile_124m.txt" 2>&1
head -24 "$OUT/profile_124m.txt" | cut -c1-150
left=$(( 455 - SECONDS ))
echo "=== train throughput at ${SECONDS} s (limit ${left} s)"
if [ "$left" -gt 150 ]; then
  timeout "$left" python3 benchmarks/train_throughput.py --global-batch 32 --micro-batch 32 --steps 12 \
    --out "$OUT/train_throughput_h200_issue24_s2.json" > "$OUT/train_log.txt" 2>&1
  echo "rc=$?"; tail -8 "$OUT/train_log.txt"
fi
echo "done at ${SECONDS} s"
