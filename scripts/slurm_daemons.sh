# Daemon helpers shared by scripts/slurm_local.sh and scripts/slurm_nodes.sh (sourced, not run).
# The sourcing script defines RUN (its pid-file directory), CGROOT and log().
#
#   pid_of PIDNAME           the pid in $RUN/PIDNAME.pid ("" if none)
#   alive PIDNAME [COMM]     that pid is a live process whose /proc/PID/comm is COMM (default PIDNAME):
#                            guards against a stale pid file pointing at a recycled pid
#   stop_daemons SPEC...     SPEC = PIDNAME or PIDNAME:COMM. TERM them all at once, wait up to 10 s, KILL
#                            what is left; always remove their pid files
#   cancel_all_jobs          scancel every job of the cluster (SLURM_CONF picks it), wait up to 10 s for
#                            them to end, so that no slurmstepd outlives the cluster
#   remove_node_cgroups NODE...  rmdir the (empty) slurm_NODE cgroup trees proctrack/cgroup leaves behind
#   start_munged SOCKET      munged with its state under $DIR/munge (SOCKET "" = the default socket);
#                            copies its pid file into $RUN and checks a credential round trip

pid_of() { [[ -s $RUN/$1.pid ]] && tr -dc '0-9' <"$RUN/$1.pid" || true; }

alive() {
  local pid; pid=$(pid_of "$1")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "${2:-$1}" ]]
}

stop_daemons() {
  local spec name pid i left pids=()
  for spec in "$@"; do
    name=${spec%%:*}
    if alive "$name" "${spec#*:}"; then pid=$(pid_of "$name"); kill -TERM "$pid" 2>/dev/null || true; pids+=("$name:$pid"); fi
  done
  for i in $(seq 1 50); do
    left=0
    for pid in "${pids[@]}"; do kill -0 "${pid#*:}" 2>/dev/null && left=1; done
    (( left )) || break
    sleep 0.2
  done
  for pid in "${pids[@]}"; do
    if kill -0 "${pid#*:}" 2>/dev/null; then log "${pid%%:*} (${pid#*:}) ignored TERM, sending KILL"; kill -KILL "${pid#*:}" 2>/dev/null || true; fi
    log "stopped ${pid%%:*} (${pid#*:})"
  done
  for spec in "$@"; do rm -f "$RUN/${spec%%:*}.pid"; done
}

cancel_all_jobs() {
  alive slurmctld && [[ -n $(squeue -h -o %i 2>/dev/null) ]] || return 0
  squeue -h -o %i | xargs -r scancel 2>/dev/null || true
  local i
  for i in $(seq 1 20); do [[ -z $(squeue -h -t R,CG,PD -o %i 2>/dev/null) ]] && break; sleep 0.5; done
}

remove_node_cgroups() {
  local node d
  for node in "$@"; do
    for d in "$CGROOT"/*/slurm_"$node"; do
      [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
  done
}

start_munged() {
  alive munged && return 0
  local sock=$1 i
  install -d -o munge -g munge -m 0700 "$DIR/munge"
  [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key missing (run: scripts/slurm_local.sh install)"
  runuser -u munge -- /usr/sbin/munged --force ${sock:+--socket="$sock"} \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || die "munged failed to start"
  for i in $(seq 1 50); do [[ -s $DIR/munge/munged.pid ]] && break; sleep 0.1; done
  cp "$DIR/munge/munged.pid" "$RUN/munged.pid"  # all the pid files in one place
  munge ${sock:+-S "$sock"} -n | unmunge ${sock:+-S "$sock"} >/dev/null || { dump_logs; die "munge credential check failed"; }
}
