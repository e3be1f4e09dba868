#!/usr/bin/env bash
# A two-node Slurm cluster on this one machine, for the multi-node tests (tests/test_slurm_nodes.py).
#
#   scripts/slurm_nodes.sh up           # bridge + 2 network namespaces, munged, slurmctld, 2 slurmd; waits for idle
#   scripts/slurm_nodes.sh status       # daemons, sinfo, squeue; exit 0 only when both nodes are up
#   scripts/slurm_nodes.sh env          # prints `export SLURM_CONF=...`: point Slurm's clients at this cluster
#   scripts/slurm_nodes.sh kill-node N  # node N dies: SIGKILL to its slurmd and every process in its namespace
#   scripts/slurm_nodes.sh start-node N # start node N's slurmd again (after kill-node); waits until it is back
#   scripts/slurm_nodes.sh down         # cancel jobs, stop the daemons by PID, delete namespaces and bridge
#
# Each node is a network namespace (`ip netns add`), joined to a host bridge by a veth pair, with its own
# address (10.213.77.2 and .3; the bridge, where slurmctld listens, is .1), and its slurmd runs in its own
# UTS namespace (hostname mnode1/mnode2) and mount namespace, where an /etc/hosts naming the three
# addresses, an /etc/resolv.conf without name server and this cluster's config directory (over /etc/slurm)
# are bind-mounted. Job steps inherit all three namespaces, so torchrun, c10d and gloo see two hosts with
# their own names and addresses. The file system is shared, as on a cluster with a shared one.
#
# It coexists with the one-node cluster of scripts/slurm_local.sh: its own state directory, slurm.conf
# (host-side clients find it through SLURM_CONF; the host's /etc/slurm is not written, only created empty
# if missing, as a mount point), ports (6917/6918), munged (its own socket, the same key), cluster name,
# node names and cgroup directories (slurm_mnodeN). Requires root, iproute2 (`ip`), util-linux (`nsenter`,
# `unshare`), munge and slurm-wlm (scripts/slurm_local.sh install).
# See docs/slurm.md, "Several nodes: the two-node CI cluster".
#
# Knobs (environment):
#   SLURM_NODES_DIR      state directory (config, logs, spool, pid files, munge)   [/var/lib/muon-slurm-nodes]
#   SLURM_NODES_CPUS     CPUs each node declares (both share this machine's)        [4: two jobs of 2 CPUs
#                        per node run side by side]
#   SLURM_NODES_GPUS     fake GPUs per node (type fake)                              [4: two 2-GPU jobs]
#   SLURM_NODES_TIMEOUT  seconds `up`/`start-node` wait for the nodes              [60]
#   SLURM_NODES_SLURMD_TIMEOUT  SlurmdTimeout: seconds before a silent node is DOWN [6] (Slurm: 300)
#   SLURM_NODES_MSG_TIMEOUT     MessageTimeout: seconds an RPC may take [4] (Slurm: 10). slurmctld pings a
#                               dead slurmd for this long (a refused connect is retried each second), twice,
#                               before the node is DOWN: kill-node -> NODE_FAIL took 31 s at 10 s / 10 s,
#                               20 s at 5 s, 15-17 s at 4 s / 6 s (measured, a two-node `sleep` job)
#   SLURM_NODES_CTLD_DEBUG      SlurmctldDebug [info] (debug2 logs every ping and connect attempt)
#   SLURM_NODES_CRED_EXPIRE     credential lifetime = delay of a requeued job        [15] (Slurm: 120)
set -euo pipefail

DIR=${SLURM_NODES_DIR:-/var/lib/muon-slurm-nodes}
CPUS=${SLURM_NODES_CPUS:-4}
GPUS=${SLURM_NODES_GPUS:-4}
TIMEOUT=${SLURM_NODES_TIMEOUT:-60}
SLURMD_TIMEOUT=${SLURM_NODES_SLURMD_TIMEOUT:-6}
MSG_TIMEOUT=${SLURM_NODES_MSG_TIMEOUT:-4}
CTLD_DEBUG=${SLURM_NODES_CTLD_DEBUG:-info}
CRED_EXPIRE=${SLURM_NODES_CRED_EXPIRE:-15}
PARTITION=ci            # the name profiles/slurm-ci submits to (another cluster, so no clash)
CLUSTER=muonnodes
CTLD_PORT=6917          # slurm_local.sh uses 6817/6818
SLURMD_PORT=6918
NET=10.213.77
BRIDGE=mnbr0
NODES=(mnode1 mnode2)
CGROOT=/sys/fs/cgroup
ETC=$DIR/etc
RUN=$DIR/run
SOCK=$DIR/munge-socket/munge.socket   # its directory must be open to the slurm user
export SLURM_CONF=$ETC/slurm.conf

log() { echo "slurm_nodes: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
need_root() { [[ $(id -u) == 0 ]] || die "must run as root (it makes namespaces and starts system daemons)"; }

node_index() {  # node_index N|mnodeN -> 0-based index
  local n=${1#mnode}
  [[ $n =~ ^[12]$ ]] || die "node must be 1, 2, mnode1 or mnode2, got '$1'"
  echo $((n - 1))
}
node_addr() { echo "$NET.$(($1 + 2))"; }  # node_addr INDEX

# --- pid helpers, stopping, munged: shared with slurm_local.sh -----------------------------------
# shellcheck source=scripts/slurm_daemons.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_daemons.sh"

# --- network -------------------------------------------------------------------------------------------
net_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  local i ns
  for i in 0 1; do
    ns=${NODES[i]}
    if ! ip netns list | grep -qw "^$ns"; then ip netns add "$ns"; fi
    if ! ip link show "veth-$ns" >/dev/null 2>&1; then
      ip link add "veth-$ns" type veth peer name eth0 netns "$ns"
      ip link set "veth-$ns" master "$BRIDGE"
      ip -n "$ns" addr add "$(node_addr $i)/24" dev eth0
    fi
    ip link set "veth-$ns" up
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route replace default via "$NET.1" 2>/dev/null || true
  done
}

net_down() {
  local ns
  for ns in "${NODES[@]}"; do
    ip link del "veth-$ns" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

# --- config --------------------------------------------------------------------------------------------
write_config() {
  local mem spare files i j node gres_node="" proctrack=linuxproc
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$(slurmd -C | head -n 1)")
  [[ -n $mem ]] || die "cannot read RealMemory from 'slurmd -C'"
  # Both nodes share this machine's memory: each declares half (less 5%); nothing enforces it.
  mem=$(( mem / 2 )); spare=$(( mem / 20 > 256 ? mem / 20 : 256 )); mem=$(( mem - spare ))
  [[ -d $CGROOT/freezer && -w $CGROOT/freezer ]] && proctrack=cgroup
  [[ $proctrack == cgroup ]] || log "WARNING: proctrack/linuxproc: signals reach every process of a step, unlike a real (cgroup) cluster"
  install -d -m 0755 "$ETC" "$DIR/dev"
  : >"$ETC/gres.conf.tmp"
  if (( GPUS > 0 )); then
    gres_node="Gres=gpu:fake:$GPUS"
    for i in 0 1; do
      node=${NODES[i]}; files=""
      for ((j = 0; j < GPUS; j++)); do
        local f=$DIR/dev/$node-gpu$j
        [[ -c $f ]] || mknod -m 0666 "$f" c 1 3 || die "mknod $f refused: fake GPUs need their own device files"
        files+=${files:+,}$f
      done
      echo "NodeName=$node Name=gpu Type=fake File=$files" >>"$ETC/gres.conf.tmp"
    done
  fi
  mv "$ETC/gres.conf.tmp" "$ETC/gres.conf"
  cat >"$ETC/cgroup.conf" <<EOF
# Generated by scripts/slurm_nodes.sh.
CgroupPlugin=cgroup/v1
CgroupMountpoint=$CGROOT
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
  # /etc/hosts of the nodes (bind-mounted over /etc/hosts in their mount namespaces)
  # The nodes' /etc/hosts and /etc/resolv.conf (bind-mounted over the host's in their mount namespaces):
  # names from the hosts file only. No DNS server: the host's would be asked for reverse lookups of
  # v4-mapped addresses (::ffff:10.213.77.3, as c10d's TCPStore sees its clients), which the hosts file
  # does not answer, and each would time out after 10 s (measured); with no server they fail at once.
  printf '127.0.0.1 localhost\n%s.1 mnctl\n%s mnode1\n%s mnode2\n' "$NET" "$(node_addr 0)" "$(node_addr 1)" >"$ETC/hosts"
  printf '# Generated by scripts/slurm_nodes.sh: no name server in the node namespaces (names: /etc/hosts).\noptions timeout:1 attempts:1\n' >"$ETC/resolv.conf"
  cat >"$ETC/slurm.conf" <<EOF
# Generated by scripts/slurm_nodes.sh ($(date -u +%FT%TZ)): a two-node cluster in network namespaces.
ClusterName=$CLUSTER
SlurmctldHost=localhost($NET.1)
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also how long a job requeued after a node failure waits (Slurm's default 120 s)
AuthInfo=socket=$SOCK,cred_expire=$CRED_EXPIRE
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/$proctrack
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# the nodes declare CPUs=$CPUS whatever slurmd counts (both share this machine's cores)
SlurmdParameters=config_overrides
SlurmdTimeout=$SLURMD_TIMEOUT
MessageTimeout=$MSG_TIMEOUT
SlurmctldDebug=$CTLD_DEBUG
MinJobAge=300
DefMemPerCPU=1000
# Shorter than Slurm's 30 s: how long srun waits for the steps of a dead node before giving up
KillWait=10
# A job on a node that dies ends (NODE_FAIL) and Snakemake resubmits it (its retries), as for any other
# failure. Slurm's default, JobRequeue=1, requeues it under the same job id instead: on a two-node cluster
# it can only restart on the node that died, and when that node came back the stale kill for the dead
# incarnation reached the requeued run (measured); real clusters requeue onto other nodes after 120 s.
JobRequeue=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
GresTypes=gpu
NodeName=mnode1 NodeAddr=$(node_addr 0) CPUs=$CPUS RealMemory=$mem $gres_node State=UNKNOWN
NodeName=mnode2 NodeAddr=$(node_addr 1) CPUs=$CPUS RealMemory=$mem $gres_node State=UNKNOWN
PartitionName=$PARTITION Nodes=mnode1,mnode2 Default=YES MaxTime=120 State=UP
EOF
  log "config: 2 nodes x CPUs=$CPUS RealMemory=$mem ${gres_node:-no GPUs}, partition $PARTITION, proctrack/$proctrack, $SLURM_CONF"
}

# --- daemons -------------------------------------------------------------------------------------------
start_munge() {
  alive munged && return 0
  install -d -o munge -g munge -m 0755 "$(dirname "$SOCK")"
  start_munged "$SOCK"
}

start_slurmd() {  # start_slurmd INDEX: slurmd in the node's net + new UTS and mount namespaces
  local node=${NODES[$1]}
  install -d -m 0755 "$DIR/spool/$node"
  # In the node, this cluster's config is also where every Slurm client looks by default (/etc/slurm):
  # job steps lose SLURM_CONF (Snakemake's jobstep executor strips SLURM_* from the rule's environment),
  # and their srun/scontrol must still find this cluster, as on a real one. The host's /etc/slurm (the
  # one-node cluster's) is untouched: the bind mounts exist only in the node's mount namespace.
  install -d -m 0755 /etc/slurm
  nsenter --net="/run/netns/$node" -- unshare --uts --mount -- /bin/sh -c \
    'mount --bind "$1/hosts" /etc/hosts && mount --bind "$1/resolv.conf" /etc/resolv.conf && mount --bind "$1" /etc/slurm && hostname "$2" && exec /usr/sbin/slurmd -N "$2"' \
    slurmd-start "$ETC" "$node" \
    || { dump_logs; die "slurmd of $node failed to start"; }
}

node_state() { sinfo -h -n "$1" -o %t 2>/dev/null | head -n 1 || true; }

wait_idle() {  # wait_idle NODE...
  local node state deadline=$((SECONDS + TIMEOUT))
  for node in "$@"; do
    while :; do
      state=$(node_state "$node")
      [[ $state =~ ^(idle|mix|alloc)$ ]] && break
      if (( SECONDS >= deadline )); then
        dump_logs; die "node $node is '${state:-not reported}' (not idle) after ${TIMEOUT}s; logs under $DIR/log"
      fi
      sleep 0.5
    done
  done
}

fully_up() {
  alive munged && alive slurmctld && alive slurmd-mnode1 slurmd && alive slurmd-mnode2 slurmd \
    && [[ $(node_state mnode1) =~ ^(idle|mix|alloc)$ && $(node_state mnode2) =~ ^(idle|mix|alloc)$ ]]
}

dump_logs() {
  local f
  for f in "$DIR/munge/munged.log" "$DIR/log/slurmctld.log" "$DIR/log"/slurmd-*.log; do
    [[ -f $f ]] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
  done
  sinfo -R >&2 2>/dev/null || true
}

cmd_up() {
  need_root
  command -v slurmctld >/dev/null || die "slurm is not installed (run: scripts/slurm_local.sh install)"
  if fully_up; then log "already up: mnode1 $(node_state mnode1), mnode2 $(node_state mnode2)"; return 0; fi
  local t0=$SECONDS
  stop_slurm   # whatever is half up
  install -d -m 0755 "$DIR" "$RUN" "$DIR/spool"
  rm -rf "$DIR/ctld" "$DIR/spool"/*
  install -d -o slurm -g slurm -m 0755 "$DIR/ctld" "$DIR/log"
  write_config
  net_up
  start_munge
  /usr/sbin/slurmctld || { dump_logs; die "slurmctld failed to start"; }
  start_slurmd 0
  start_slurmd 1
  wait_idle mnode1 mnode2
  log "up in $((SECONDS - t0)) s: mnode1 ($(node_addr 0)) and mnode2 ($(node_addr 1)) idle, partition $PARTITION, gres $(sinfo -h -o %G | head -n 1); clients: export SLURM_CONF=$SLURM_CONF"
}

# Every process in node INDEX's network namespace (its slurmd, slurmstepds and job processes).
node_pids() { ip netns pids "${NODES[$1]}" 2>/dev/null || true; }

cmd_kill_node() {
  need_root
  local i pids; i=$(node_index "$1")
  pids=$(node_pids "$i")
  [[ -n $pids ]] && kill -KILL $pids 2>/dev/null || true
  rm -f "$RUN/slurmd-${NODES[i]}.pid"
  log "killed ${NODES[i]}: $(wc -w <<<"$pids") processes (slurmd and everything it started)"
}

cmd_start_node() {
  need_root
  local i; i=$(node_index "$1")
  alive "slurmd-${NODES[i]}" slurmd || start_slurmd "$i"
  wait_idle "${NODES[i]}"
  log "${NODES[i]} back: $(node_state "${NODES[i]}")"
}

stop_slurm() {
  cancel_all_jobs
  stop_daemons slurmd-mnode1:slurmd slurmd-mnode2:slurmd slurmctld
  # Processes left in a node's namespace (a step that outlived its slurmd) are ours: end them.
  local i pids
  for i in 0 1; do pids=$(node_pids "$i"); [[ -n $pids ]] && kill -KILL $pids 2>/dev/null || true; done
  remove_node_cgroups "${NODES[@]}"
}

cmd_down() {
  need_root
  install -d -m 0755 "$RUN" 2>/dev/null || true
  stop_slurm
  stop_daemons munged
  rm -f "$DIR/munge/munged.pid"
  net_down
  rm -f "$SLURM_CONF"  # clients (and the tests' skip check) then see at once that this cluster is not up
  log "down"
}

cmd_status() {
  local d rc=0
  for d in munged:munged slurmctld:slurmctld slurmd-mnode1:slurmd slurmd-mnode2:slurmd; do
    if alive "${d%%:*}" "${d#*:}"; then echo "${d%%:*}: running (pid $(pid_of "${d%%:*}"))"; else echo "${d%%:*}: stopped"; rc=3; fi
  done
  if alive slurmctld; then
    sinfo -o '%P %a %l %D %t %c %m %G %N' || true
    squeue -o '%i %j %T %M %D %R' || true
    [[ $(node_state mnode1) =~ ^(idle|mix|alloc)$ && $(node_state mnode2) =~ ^(idle|mix|alloc)$ ]] || rc=3
  fi
  return $rc
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  kill-node) cmd_kill_node "${2:?usage: $0 kill-node 1|2}" ;;
  start-node) cmd_start_node "${2:?usage: $0 start-node 1|2}" ;;
  *) echo "usage: $0 up|down|status|env|kill-node N|start-node N" >&2; exit 2 ;;
esac
