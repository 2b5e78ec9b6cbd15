#!/usr/bin/env bash
# Runs one member on this host: consensus first, then the peer and client gateways once its
# sockets exist. Stays in the foreground (for systemd), stops all three on SIGTERM/SIGINT, and
# restarts a gateway that dies without touching consensus. A consensus that dies after it started
# is a member restart: it is started again on its data dir and the gateways (left running)
# register again. One that fails while starting (bad configuration, say) stops the member.
#
#   scripts/start-node.sh                          # one member on 127.0.0.1:2379, data in ./default.etcd
#   scripts/start-node.sh /opt/etcd/cfg/etcd.conf  # etcd.conf KEY="value" lines (the seed's format)
#   scripts/start-node.sh [conf] --name n1 ...     # etcd-style flags; ETCD_* variables work too
#
# Flags override ETCD_* variables, which override the file. Binaries come from $ETCDRS_BIN_DIR as
# they are (tests and benchmarks point it at their builds), or else from the workspace's release
# build, which `cargo build --release` brings up to date at every start (a no-op when nothing
# changed; without cargo, a warning when the sources are newer). The PIDs of the three processes
# are kept in <data-dir>/member.pids ("consensus PID" lines), for operators and tests.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '%s start-node: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$*" >&2; }

args=()
if [[ $# -gt 0 && $1 != -* ]]; then
  if [[ ! -r $1 ]]; then
    log "cannot read configuration file $1"
    exit 2
  fi
  args+=(--env-file "$1")
  shift
fi
args+=("$@")

bins=(consensus peer-gateway client-gateway)

# cargo's output, except the lone "Finished" line of a build that had nothing to do.
quiet_when_fresh() {
  local line shown=0
  while IFS= read -r line; do
    if ((!shown)) && [[ $line =~ ^[[:space:]]*Finished ]]; then continue; fi
    shown=1
    printf '%s\n' "$line" >&2
  done
}

# Whether a source the binaries are built from is newer than $1.
sources_newer_than() {
  [[ -n $(find "$repo"/{schema,consensus,peer-gateway,client-gateway} "$repo"/Cargo.toml "$repo"/Cargo.lock \
    -newer "$1" \( -name '*.rs' -o -name '*.capnp' -o -name '*.proto' -o -name Cargo.toml -o -name Cargo.lock \) \
    -print -quit 2>/dev/null) ]]
}

bin_dir=${ETCDRS_BIN_DIR:-}
if [[ -z $bin_dir ]]; then
  target=${CARGO_TARGET_DIR:-$repo/target}
  bin_dir=$target/release
  for b in "${bins[@]}"; do
    if [[ ! -x $bin_dir/$b ]]; then
      log "setting up and building release binaries in $target (first start only)"
      (cd "$repo" && scripts/setup.sh) || exit 1
      break
    fi
  done
  # Built on every start, so that a `git pull` never leaves the old binaries running; a no-op (and
  # silent) when they are up to date.
  if command -v cargo >/dev/null; then
    (cd "$repo" && cargo build --release "${bins[@]/#/--bin=}" 2>&1) | quiet_when_fresh || {
      log "building the release binaries failed"
      exit 1
    }
  else
    for b in "${bins[@]}"; do
      if [[ -x $bin_dir/$b ]] && sources_newer_than "$bin_dir/$b"; then
        log "warning: the sources are newer than $bin_dir/$b and cargo is not on PATH to rebuild it; starting the old binaries"
        break
      fi
    done
  fi
fi
for b in "${bins[@]}"; do
  [[ -x $bin_dir/$b ]] || { log "missing $bin_dir/$b"; exit 1; }
done

# consensus parses the configuration; ask it where the data dir is (this also validates it).
data_dir=$("$bin_dir/consensus" "${args[@]}" --print-data-dir) || exit 1
mkdir -p "$data_dir" || exit 1
pid_file=$data_dir/member.pids

consensus_pid='' peer_pid='' client_pid='' stopping=0

write_pids() {
  printf 'consensus %s\npeer-gateway %s\nclient-gateway %s\nstart-node %s\n' \
    "$consensus_pid" "$peer_pid" "$client_pid" "$$" >"$pid_file.tmp" && mv "$pid_file.tmp" "$pid_file"
}

# ETCDRS_SUPERVISOR_PID: a process started just before this script is killed checks that it is
# still this script's child, since the kernel's parent-death signal cannot cover that moment.
start_peer() { ETCDRS_SUPERVISOR_PID=$$ "$bin_dir/peer-gateway" --socket "$data_dir/peer.sock" & peer_pid=$!; write_pids; }
start_client() { ETCDRS_SUPERVISOR_PID=$$ "$bin_dir/client-gateway" --socket "$data_dir/client.sock" & client_pid=$!; write_pids; }

stop_all() {
  stopping=1
  log "stopping the member"
  for p in $client_pid $peer_pid $consensus_pid; do kill -TERM "$p" 2>/dev/null; done
}
trap stop_all TERM INT

# Starts consensus and waits for its sockets (it removes stale ones before binding; client.sock is
# bound last).
# Returns non-zero when it exits while starting.
start_consensus() {
  rm -f "$data_dir/peer.sock" "$data_dir/raft.sock" "$data_dir/write.sock" "$data_dir/client.sock"
  ETCDRS_SUPERVISOR_PID=$$ "$bin_dir/consensus" "${args[@]}" &
  consensus_pid=$!
  write_pids
  for _ in $(seq 1 1200); do
    if ! kill -0 "$consensus_pid" 2>/dev/null; then
      wait "$consensus_pid"; status=$?
      log "consensus exited with status $status while starting"
      return 1
    fi
    [[ -S $data_dir/peer.sock && -S $data_dir/client.sock ]] && return 0
    ((stopping)) && return 0
    sleep 0.05
  done
  log "consensus did not open its sockets within 60 s"
  return 1
}

start_consensus || { kill -TERM "$consensus_pid" 2>/dev/null; exit 1; }
if ((!stopping)); then
  start_peer
  start_client
fi

peer_restarts=0 client_restarts=0
while ((!stopping)); do
  wait -n
  ((stopping)) && break
  if ! kill -0 "$consensus_pid" 2>/dev/null; then
    wait "$consensus_pid"; status=$?
    log "consensus (pid $consensus_pid) exited with status $status; restarting it from its data dir"
    if ! start_consensus; then
      log "consensus cannot start again; stopping the gateways"
      for p in $client_pid $peer_pid; do kill -TERM "$p" 2>/dev/null; done
      wait
      exit 1
    fi
  fi
  # A gateway that keeps dying at once (bad certificate, say) is retried at most once a second.
  if ! kill -0 "$peer_pid" 2>/dev/null; then
    peer_restarts=$((peer_restarts + 1))
    log "peer gateway (pid $peer_pid) exited; restarting it (restart $peer_restarts)"
    ((peer_restarts > 1)) && sleep 1
    start_peer
  fi
  if ! kill -0 "$client_pid" 2>/dev/null; then
    client_restarts=$((client_restarts + 1))
    log "client gateway (pid $client_pid) exited; restarting it (restart $client_restarts)"
    ((client_restarts > 1)) && sleep 1
    start_client
  fi
done
wait
log "member stopped"
exit 0
