#!/usr/bin/env bash
# Device session C, on ONE H200 (kind nvidia-h200; issue 26): the nGPT study's `infra` + `lr_sweep` and the
# DisTrO study's `measure` phase at their real scale, through Snakemake, sharing the GPU, on the Linux
# kernel's Documentation tokenized by the data stage (BPE 8192). A call lasts at most 10 minutes and the
# whole pipeline about 25, so the pipeline runs detached (setsid) in $W, which outlives a call while the
# machine stays warm, and each call waits on it and brings back what is finished:
#   bash benchmarks/device/session_c.sh start 560    # first call: install, start the pipeline, wait 560 s
#   bash benchmarks/device/session_c.sh wait 560     # later calls: wait up to 560 s more
# Run from the repository root (a copy of the checkout); needs .whl/ (Snakemake's wheels; the device has
# no Snakemake and no network) and data/kernel_docs.jsonl.xz. Results: $OUT/{ngpt,distro}.tgz, logs.
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export WANDB_MODE=disabled PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
W=${W:-/root/w}
OUT=${OUT:-/tmp/out}
SITE=/root/site
export PYTHONPATH=$W:$SITE
# --nolock: two Snakemake processes share $W (the studies write disjoint results; the data stage ran first)
SMK="python3 -m snakemake --scheduler greedy --keep-going --retries 1 --cores 16 --nolock"

pipeline() {  # both studies at once: the GPU is shared by up to 8 runs (declared GPU memory: 4 x 30 GB nGPT, 4 x 12 GB GPT)
  cd "$W" || exit 1
  t0=$(date +%s)
  # the shared data stage, once (the target first: --configfile would read it as a second configfile, which
  # is what the 2026-12-02 session did; both studies then ran the deterministic data stage at once)
  python3 -m snakemake results/data/kernel-docs-bpe8192/manifest.json --cores 4 --config study=distro \
    --configfile docs/examples/distro_measure.yaml > logs_data.txt 2>&1
  echo "data stage rc=$? at $(( $(date +%s) - t0 )) s" >> pipeline.txt
  ( $SMK measure --config study=distro --configfile docs/examples/distro_measure.yaml \
      --resources gpu_mem_mb=48000 > smk_distro.txt 2>&1
    echo "distro measure rc=$? at $(( $(date +%s) - t0 )) s" >> pipeline.txt ) &
  p1=$!
  ( $SMK lr_sweep --config study=ngpt --configfile docs/examples/ngpt_lr_sweep.yaml \
      --resources gpu_mem_mb=120000 > smk_ngpt.txt 2>&1
    echo "ngpt lr_sweep rc=$? at $(( $(date +%s) - t0 )) s" >> pipeline.txt ) &
  p2=$!
  while sleep 15; do  # GPU memory and load, for the report
    echo "$(( $(date +%s) - t0 )) $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits)" >> gpu_trace.txt
    [ -e DONE ] && break
  done &
  wait $p1 $p2
  touch DONE
}

bring_back() {
  cd "$W" || return
  tar czf "$OUT/ngpt.tgz" --exclude='*/checkpoints/*' --exclude='*/captures/*' results/ngpt logs/ngpt 2>/dev/null
  tar czf "$OUT/distro.tgz" --exclude='*/checkpoints/*' --exclude='*/captures/*' results/distro logs/distro \
    results/data/kernel-docs-bpe8192/manifest.json logs/data 2>/dev/null
  tar czf "$OUT/logs.tgz" pipeline.txt gpu_trace.txt smk_distro.txt smk_ngpt.txt logs_data.txt 2>/dev/null
  echo "--- pipeline"; cat pipeline.txt 2>/dev/null
  echo "--- runs done: ngpt $(ls results/ngpt/runs/*/*/*/*/metrics.json 2>/dev/null | wc -l)/24," \
       "distro $(ls results/distro/runs/*/*/*/*/metrics.json 2>/dev/null | wc -l)/4"
  echo "--- gpu (s, MiB used, util %)"; tail -3 gpu_trace.txt 2>/dev/null
  echo "--- snakemake distro"; grep -E "Error|error|steps of|Finished|done" smk_distro.txt 2>/dev/null | tail -6
  echo "--- snakemake ngpt"; grep -E "Error|error|steps of|Finished|done" smk_ngpt.txt 2>/dev/null | tail -6
  ls results/distro/measure/ 2>/dev/null | head; grep -h "measured" logs/distro/measure/measure.log 2>/dev/null
}

wait_for() {  # until DONE or $1 seconds
  local t0=$(date +%s)
  while [ ! -e "$W/DONE" ] && [ $(( $(date +%s) - t0 )) -lt "$1" ]; do sleep 5; done
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
    setsid nohup bash "$W/benchmarks/device/session_c.sh" pipeline > "$W/pipeline_stdout.txt" 2>&1 < /dev/null &
    wait_for "${2:-560}" ;;
  pipeline) pipeline ;;
  wait) wait_for "${2:-560}" ;;
  *) echo "usage: $0 start|wait [seconds]"; exit 2 ;;
esac
