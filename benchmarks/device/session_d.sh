#!/usr/bin/env bash
# Device session D, on ONE H200 (kind nvidia-h200; issues 26 and 27), through Snakemake, sharing the GPU:
#  - nGPT: the 3 lr_sweep runs session C left untrained (adamw seed 123, muon lr0.023 seed 7, muon lr0.1
#    seed 7), asked for by their output files with session C's configfile (same fingerprints);
#  - DisTrO: the `compress` and `topk` phases with two ranks sharing the one GPU (TRAINER_RANKS_SHARE_GPU=1,
#    gloo), shortened by docs/examples/distro_compress.yaml (250 steps, fewer seeds).
# A call lasts at most 10 minutes, so the pipeline runs detached (setsid) in $W, which outlives a call while
# the machine stays warm; each call waits on it and brings back what is finished:
#   bash benchmarks/device/session_d.sh start 540   # first call: install, start, wait until 540 s into the call
#   bash benchmarks/device/session_d.sh wait 200    # a later call: wait up to 200 s more
# Run from a copy of the checkout holding .whl/ (Snakemake's wheels) and data/kernel_docs.jsonl.xz.
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export WANDB_MODE=disabled PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
# 13 training processes compile at once: a small inductor worker pool each (host memory), loopback for gloo
export TORCHINDUCTOR_COMPILE_THREADS=4 GLOO_SOCKET_IFNAME=lo
W=${W:-/root/w}
OUT=${OUT:-/tmp/out}
SITE=/root/site
export PYTHONPATH=$W:$SITE
SMK="python3 -m snakemake --scheduler greedy --keep-going --retries 1 --nolock"
NGPT_TARGETS="results/ngpt/runs/ngpt-124m/adamw/default/seed123/metrics.json
  results/ngpt/runs/ngpt-124m/muon/lr0.023/seed7/metrics.json results/ngpt/runs/ngpt-124m/muon/lr0.1/seed7/metrics.json"
DISTRO_TARGETS="results/distro/compress/section.md results/distro/topk/section.md"

pipeline() {
  cd "$W" || exit 1
  t0=$(date +%s)
  python3 -m snakemake results/data/kernel-docs-bpe8192/manifest.json --cores 4 --config study=distro \
    --configfile docs/examples/distro_compress.yaml > logs_data.txt 2>&1
  echo "data stage rc=$? at $(( $(date +%s) - t0 )) s" >> pipeline.txt
  # nGPT: 3 runs at once (30 GB declared each, 4 CPU threads)
  ( $SMK $NGPT_TARGETS --cores 12 --config study=ngpt --configfile docs/examples/ngpt_lr_sweep.yaml \
      --resources gpu_mem_mb=90000 > smk_ngpt.txt 2>&1
    echo "ngpt 3 runs rc=$? at $(( $(date +%s) - t0 )) s" >> pipeline.txt ) &
  p1=$!
  # DisTrO: 5 two-rank runs at once (2 x 9 GB declared each, 1 CPU thread per rank)
  ( TRAINER_RANKS_SHARE_GPU=1 $SMK $DISTRO_TARGETS --cores 16 --config study=distro \
      --configfile docs/examples/distro_compress.yaml --resources gpu_mem_mb=90000 > smk_distro.txt 2>&1
    echo "distro compress+topk rc=$? at $(( $(date +%s) - t0 )) s" >> pipeline.txt ) &
  p2=$!
  while sleep 10; do  # GPU memory and load, for the report
    echo "$(( $(date +%s) - t0 )) $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits)" >> gpu_trace.txt
    [ -e DONE ] && break
  done &
  wait $p1 $p2
  touch DONE
}

bring_back() {
  cd "$W" || return
  tar czf "$OUT/ngpt.tgz" --exclude='*/checkpoints/*' results/ngpt logs/ngpt 2>/dev/null
  tar czf "$OUT/distro.tgz" --exclude='*/checkpoints/*' --exclude='*/captures/*' results/distro logs/distro \
    results/data/kernel-docs-bpe8192/manifest.json logs/data 2>/dev/null
  tar czf "$OUT/logs.tgz" pipeline.txt gpu_trace.txt smk_distro.txt smk_ngpt.txt logs_data.txt pytest_gpu.txt 2>/dev/null
  echo "--- pipeline"; cat pipeline.txt 2>/dev/null
  echo "--- runs done: ngpt $(ls results/ngpt/runs/*/*/*/*/metrics.json 2>/dev/null | wc -l)/3," \
       "distro $(ls results/distro/runs/*/*/*/*/metrics.json 2>/dev/null | wc -l)/19"
  echo "--- gpu (s, MiB used, util %)"; sort -t' ' -k2 -n gpu_trace.txt 2>/dev/null | tail -1; tail -2 gpu_trace.txt 2>/dev/null
  echo "--- snakemake distro"; grep -E "Error|error|steps \(|Finished" smk_distro.txt 2>/dev/null | tail -8
  echo "--- snakemake ngpt"; grep -E "Error|error|steps \(|Finished" smk_ngpt.txt 2>/dev/null | tail -5
  echo "--- pytest gpu"; tail -3 pytest_gpu.txt 2>/dev/null
  for f in results/distro/runs/*/*/*/*/metrics.json results/ngpt/runs/*/*/*/*/metrics.json; do
    [ -e "$f" ] && python3 -c "import json,sys; m=json.load(open('$f')); print('$f'.split('/runs/')[1][:-13], m['status'], round(m['final_val_loss'] or 0, 4), round(m['wall_time_s']), m.get('backend'), (m.get('diagnostics') or {}).get('bytes_sent_per_step'))"
  done
}

wait_for() {  # until DONE or until $1 seconds into this call
  while [ ! -e "$W/DONE" ] && [ "$SECONDS" -lt "$1" ]; do sleep 5; done
  bring_back
}

case "${1:-}" in
  start)
    mkdir -p "$W" "$OUT"
    nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
      > "$OUT/pip.log" 2>&1 || { echo "pip failed"; tail -5 "$OUT/pip.log"; exit 1; }
    cp -a . "$W/" && rm -rf "$W/.whl"
    mkdir -p "$W/data" && python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('data/kernel_docs.jsonl.xz'), open('$W/data/kernel_docs.jsonl', 'wb'))"
    rm -f "$W/DONE"
    echo "setup done at ${SECONDS} s"
    setsid nohup bash "$W/benchmarks/device/session_d.sh" pipeline > "$W/pipeline_stdout.txt" 2>&1 < /dev/null &
    # the GPU test of two ranks on one GPU, beside the pipeline
    ( cd "$W" && WANDB_MODE=disabled timeout 300 python3 -m pytest -q -m gpu tests/test_distributed_share.py \
        > pytest_gpu.txt 2>&1 ) &
    wait_for "${2:-540}" ;;
  pipeline) pipeline ;;
  wait) wait_for "${2:-540}" ;;
  *) echo "usage: $0 start|wait [seconds into the call]"; exit 2 ;;
esac
