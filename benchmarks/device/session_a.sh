#!/usr/bin/env bash
# Device session, part A, on a machine with 2 GPUs (nvidia-h200-x2): GPU 0 runs the OrthoNoise study's
# phase 1 through Snakemake on BPE-tokenized text (issue 12); GPU 1 meanwhile runs the one-GPU benchmarks
# (issues 15, 10, 11) and the tests marked gpu. Run from the repository root with the wheels in .whl/
# (snakemake is not installed there). Results go to $OUT.
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --find-links .whl "snakemake==9.27.1" jsonschema > "$OUT/pip.log" 2>&1 \
  || { echo "pip failed"; tail -5 "$OUT/pip.log"; }
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, 'gpus', torch.cuda.device_count())"
start=$(date +%s)
(
  export CUDA_VISIBLE_DEVICES=0
  timeout 480 python3 -m snakemake phase1 --configfile docs/examples/gpu_phase1.yaml --cores 12 \
    --resources gpu_mem_mb=130000 > "$OUT/phase1.log" 2>&1
  echo "phase1 rc=$? after $(( $(date +%s) - start )) s" | tee -a "$OUT/phase1.log"
  tar czf "$OUT/phase1.tgz" --exclude='*/checkpoints/*' results/orthonoise logs/orthonoise logs/data \
    results/data/stdlib-bpe4096/manifest.json 2>/dev/null
) &
(
  export CUDA_VISIBLE_DEVICES=1
  b="$OUT/bench_a.log"
  timeout 120 python3 benchmarks/optimizer_step.py --sizes 124m --rank-workers 1,15 --out "$OUT/optimizer_step_124m.json" > "$b" 2>&1
  echo "optimizer_step 124m rc=$? at $(( $(date +%s) - start )) s" >> "$b"
  timeout 180 python3 benchmarks/ngpt_step.py --out "$OUT/ngpt_step.json" >> "$b" 2>&1
  echo "ngpt_step rc=$? at $(( $(date +%s) - start )) s" >> "$b"
  timeout 130 python3 benchmarks/compressor.py --out "$OUT/compressor.json" >> "$b" 2>&1
  echo "compressor rc=$? at $(( $(date +%s) - start )) s" >> "$b"
  left=$(( 560 - ($(date +%s) - start) ))
  [ "$left" -gt 30 ] && timeout "$left" python3 -m pytest -q -m gpu tests/ -p no:cacheprovider > "$OUT/pytest_gpu.log" 2>&1
  echo "pytest -m gpu rc=$? at $(( $(date +%s) - start )) s" >> "$b"
) &
wait
echo "session A done after $(( $(date +%s) - start )) s"
tail -25 "$OUT/bench_a.log"; tail -5 "$OUT/phase1.log"; tail -5 "$OUT/pytest_gpu.log" 2>/dev/null
