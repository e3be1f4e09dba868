#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for CI and for trying the Slurm profile locally.
#
#   scripts/slurm_local.sh install   # apt-get install munge slurm-wlm (idempotent, quiet)
#   scripts/slurm_local.sh up        # munged + slurmctld + slurmd, no systemd; waits for `idle`
#   scripts/slurm_local.sh status    # daemons, node state, queue; exit 0 only when fully up
#   scripts/slurm_local.sh down      # cancel jobs, stop the daemons by PID, remove the pid files
#
# Debian bookworm (slurm-wlm 22.05), run as root. Everything the daemons write (state, spool, logs,
# pid files, munged's log/seed) lives under $SLURM_LOCAL_DIR; only the two config files go where
# every Slurm client looks for them: /etc/slurm/slurm.conf and /etc/slurm/gres.conf.
# See docs/slurm.md for the design, timings and the signal-delivery findings.
#
# Knobs (environment):
#   SLURM_LOCAL_DIR        state directory                        [/var/lib/muon-slurm]
#   SLURM_LOCAL_PARTITION  the one partition, Default=YES         [ci]
#   SLURM_LOCAL_GPUS       fake GPUs declared on the node         [2]
#   SLURM_LOCAL_GPU_TYPE   their gres type ("" for untyped)       [fake]
#   SLURM_LOCAL_MAXTIME    partition MaxTime, minutes             [120]
#   SLURM_LOCAL_MINJOBAGE  seconds a finished job stays in squeue [300] (>= 3x init seconds)
#   SLURM_LOCAL_TIMEOUT    seconds `up` waits for the node        [60]
#   SLURM_LOCAL_PROCTRACK  auto | cgroup | linuxproc               [auto: cgroup where the cgroup-v1
#                          freezer is writable]. cgroup is what real clusters run, and it decides who
#                          gets `scancel --signal` (only each step's top process); see docs/slurm.md.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/var/lib/muon-slurm}
PARTITION=${SLURM_LOCAL_PARTITION:-ci}
GPUS=${SLURM_LOCAL_GPUS:-2}
GPU_TYPE=${SLURM_LOCAL_GPU_TYPE-fake}
MAXTIME=${SLURM_LOCAL_MAXTIME:-120}
MINJOBAGE=${SLURM_LOCAL_MINJOBAGE:-300}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
PROCTRACK=${SLURM_LOCAL_PROCTRACK:-auto}
CGROOT=/sys/fs/cgroup
ETC=/etc/slurm
NODE=localhost
RUN=$DIR/run

log() { echo "slurm_local: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() { [[ $(id -u) == 0 ]] || die "must run as root (it starts system daemons)"; }

# --- pid helpers, stopping, munged: shared with slurm_nodes.sh ----------------------------------
# shellcheck source=scripts/slurm_daemons.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_daemons.sh"

# --- install ---------------------------------------------------------------------------------
cmd_install() {
  need_root
  if command -v munged >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
     && command -v sbatch >/dev/null; then
    log "munge and slurm-wlm already installed (slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm 2>/dev/null))"; return 0
  fi
  local t0=$SECONDS out=/tmp/slurm_local_install.$$.log
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends munge slurm-wlm; } >"$out" 2>&1; then
    tail -n 30 "$out" >&2; rm -f "$out"; die "apt-get install munge slurm-wlm failed"
  fi
  rm -f "$out"
  log "installed munge and slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm) in $((SECONDS - t0)) s"
}

# --- config ----------------------------------------------------------------------------------
write_config() {
  local hw cpus mem gres_node gres_line
  hw=$(slurmd -C | head -n 1)
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  [[ -n $cpus && -n $mem ]] || die "cannot read CPUs/RealMemory from 'slurmd -C': $hw"
  # Declaring more memory than slurmd measures drains the node; keep 5% (at least 256 MB) spare.
  local spare=$(( mem / 20 > 256 ? mem / 20 : 256 ))
  mem=$(( mem - spare ))
  if (( GPUS > 0 )); then
    # Fake GPUs: each needs its own device File (without File= the node drains; the same file
    # twice is "gpu duplicate device file name"). We make null devices $DIR/dev/fakegpuN (char 1:3,
    # i.e. /dev/null under another name); where mknod is not allowed, other harmless devices serve.
    local files="" typ="" i spare_devs=(/dev/null /dev/zero /dev/full /dev/urandom)
    install -d -m 0755 "$DIR/dev"
    for ((i = 0; i < GPUS; i++)); do
      local f=$DIR/dev/fakegpu$i
      [[ -c $f ]] || mknod -m 0666 "$f" c 1 3 2>/dev/null || f=${spare_devs[i]:-}
      [[ -n $f ]] || die "cannot make $GPUS fake GPU devices here (mknod refused); use SLURM_LOCAL_GPUS<=4"
      files+=${files:+,}$f
    done
    [[ -n $GPU_TYPE ]] && typ="$GPU_TYPE:"
    gres_node="Gres=gpu:${typ}${GPUS}"
    gres_line="NodeName=$NODE Name=gpu${GPU_TYPE:+ Type=$GPU_TYPE} File=$files"
  else
    gres_node=""; gres_line=""
  fi
  local proctrack=$PROCTRACK
  if [[ $proctrack == auto ]]; then
    if [[ -d $CGROOT/freezer && -w $CGROOT/freezer ]]; then proctrack=cgroup; else proctrack=linuxproc; fi
  fi
  [[ $proctrack == cgroup || $proctrack == linuxproc ]] || die "SLURM_LOCAL_PROCTRACK must be auto, cgroup or linuxproc"
  [[ $proctrack == cgroup ]] || log "WARNING: proctrack/linuxproc: signals reach every process of a step, unlike a real (cgroup) cluster"
  mkdir -p "$ETC"
  # cgroup v1, used only to track a step's processes (no limits: nothing is constrained).
  cat >"$ETC/cgroup.conf" <<EOF
# Generated by scripts/slurm_local.sh.
CgroupPlugin=cgroup/v1
CgroupMountpoint=$CGROOT
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
  cat >"$ETC/slurm.conf" <<EOF
# Generated by scripts/slurm_local.sh ($(date -u +%FT%TZ)): a one-node CI cluster. Do not edit.
ClusterName=muonci
SlurmctldHost=$NODE
AuthType=auth/munge
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/$proctrack
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# squeue keeps finished jobs this long; the Snakemake slurm plugin (status command squeue) needs
# at least 3x slurm-init-seconds-before-status-checks.
MinJobAge=$MINJOBAGE
DefMemPerCPU=1000
KillWait=30
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $gres_node State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=$MAXTIME State=UP
EOF
  printf '# Generated by scripts/slurm_local.sh: fake GPUs (no CUDA behind them).\n%s\n' "$gres_line" >"$ETC/gres.conf"
  log "config: CPUs=$cpus RealMemory=$mem ${gres_node:-no GPUs} partition=$PARTITION MaxTime=${MAXTIME}min MinJobAge=${MINJOBAGE}s proctrack/$proctrack"
}

# --- up --------------------------------------------------------------------------------------
node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n 1 || true; }

fully_up() { alive munged && alive slurmctld && alive slurmd && [[ $(node_state) =~ ^(idle|mix|alloc) ]]; }

dump_logs() {
  local f
  for f in "$DIR/munge/munged.log" "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log"; do
    [[ -f $f ]] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
  done
  sinfo -R >&2 2>/dev/null || true
}

start_munge() {
  alive munged && return 0
  rm -f "$RUN/munged.pid"
  install -d -o munge -g munge -m 0755 /run/munge
  start_munged ""
}

cmd_up() {
  need_root
  command -v slurmctld >/dev/null || die "slurm is not installed (run: $0 install)"
  if fully_up; then log "already up: node $NODE $(node_state), partition $PARTITION"; return 0; fi
  local t0=$SECONDS
  # Anything half-started is stopped first, so that `up` always ends in one known state.
  stop_slurm_daemons
  install -d -m 0755 "$DIR" "$RUN"
  rm -rf "$DIR/ctld" "$DIR/slurmd"   # fresh job ids and no stale node/job state on each start
  install -d -o slurm -g slurm -m 0755 "$DIR/ctld" "$DIR/log"
  install -d -m 0755 "$DIR/slurmd"
  write_config
  start_munge
  /usr/sbin/slurmctld || { dump_logs; die "slurmctld failed to start"; }
  /usr/sbin/slurmd -N "$NODE" || { dump_logs; die "slurmd failed to start"; }
  local state="" deadline=$((SECONDS + TIMEOUT))
  while (( SECONDS < deadline )); do
    state=$(node_state)
    [[ $state == idle ]] && break
    sleep 0.5
  done
  if [[ $state != idle ]]; then
    dump_logs
    die "node $NODE is '${state:-not reported}' (not idle) after ${TIMEOUT}s; see logs above and under $DIR/log"
  fi
  log "up in $((SECONDS - t0)) s: node $NODE idle, partition $PARTITION, gres $(sinfo -h -o %G)"
}

# --- down ------------------------------------------------------------------------------------
stop_slurm_daemons() {
  cancel_all_jobs
  stop_daemons slurmd slurmctld
  remove_node_cgroups "$NODE"  # proctrack/cgroup leaves its (empty) per-node cgroup directories behind
}

cmd_down() {
  need_root
  install -d -m 0755 "$RUN" 2>/dev/null || true
  stop_slurm_daemons
  stop_daemons munged
  rm -f "$DIR/munge/munged.pid"
  log "down"
}

# --- status ----------------------------------------------------------------------------------
cmd_status() {
  local d rc=0
  for d in munged slurmctld slurmd; do
    if alive "$d"; then echo "$d: running (pid $(pid_of "$d"))"; else echo "$d: stopped"; rc=3; fi
  done
  if alive slurmctld; then
    sinfo -o '%P %a %l %D %t %c %m %G' || true
    squeue -o '%i %j %T %M %b %R' || true
    [[ $(node_state) =~ ^(idle|mix|alloc) ]] || rc=3
  fi
  return $rc
}

case ${1:-} in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac
