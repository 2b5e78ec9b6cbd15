#!/usr/bin/env bash
# What a member's history costs it: one member (127.0.0.114, client port 2379) takes puts with
# etcd-bench in steps, and after each step the script reports the consensus process's RSS
# (VmRSS), the WAL's segment files and bytes on disk, RocksDB's bytes, and the time a clean restart
# takes until `/health` answers true. For issue 16's log compaction, run it once per
# build and compare.
#
#   scripts/bench-log-growth.sh --bin-dir DIR [--steps 100000,1000000] [--val-size 256]
#                               [--key-space 100000] [--work DIR] [--keep] [-- member flags...]
#
# Binaries (consensus, peer-gateway, client-gateway, etcd-bench) come from --bin-dir; etcdctl
# and curl from PATH. Flags after `--` go to the member (e.g. --snapshot-count 1000). Everything
# started is stopped by PID (also on Ctrl-C or failure).
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '%s bench-log-growth: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

bin='' steps=100000,1000000 val=256 keys=100000 work='' keep=0 host=127.0.0.114
extra=()
while (($#)); do
  case $1 in
    --bin-dir) bin=${2:?}; shift 2 ;;
    --steps) steps=${2:?}; shift 2 ;;
    --val-size) val=${2:?}; shift 2 ;;
    --key-space) keys=${2:?}; shift 2 ;;
    --work) work=${2:?}; shift 2 ;;
    --keep) keep=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ -n $bin && -x $bin/consensus && -x $bin/etcd-bench ]] || die "--bin-dir must hold consensus and etcd-bench"
bin=$(cd "$bin" && pwd)
[[ -n $work ]] || work=$(mktemp -d /tmp/bench-log-growth.XXXXXX)
mkdir -p "$work"
data=$work/data
node_pid=''

stop_member() {
  [[ -n $node_pid ]] || return 0
  local old
  old=$(consensus_pid)
  kill -TERM "$node_pid" 2>/dev/null
  for _ in $(seq 1 300); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$node_pid" 2>/dev/null
  wait "$node_pid" 2>/dev/null
  node_pid=''
  # start-node.sh waits for its three processes; make sure of the one that matters.
  for _ in $(seq 1 300); do [[ -n $old ]] && kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
}
cleanup() {
  stop_member
  ((keep)) || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts the member in the background (node_pid) and sets `took` to the seconds until its
# /health answers true (the predecessor gone first, see stop_member).
took=''
start_member() {
  ETCDRS_BIN_DIR=$bin RUST_LOG=info "$repo/scripts/start-node.sh" --name lg --data-dir "$data" \
    --listen-client-urls "http://$host:2379" --advertise-client-urls "http://$host:2379" \
    --listen-peer-urls "http://$host:2380" --initial-advertise-peer-urls "http://$host:2380" \
    --initial-cluster "lg=http://$host:2380" "${extra[@]}" >>"$work/member.log" 2>&1 &
  node_pid=$!
  local started=$EPOCHREALTIME
  for _ in $(seq 1 6000); do
    # /health (a linearizable read, as etcdctl's health check) fails at once while nothing
    # listens, so the poll's granularity is its 20 ms sleep.
    if curl -sf -m 2 "http://$host:2379/health" 2>/dev/null | grep -q '"health":"true"'; then
      took=$(echo "$started $EPOCHREALTIME" | awk '{printf "%.2f", $2 - $1}')
      return 0
    fi
    kill -0 "$node_pid" 2>/dev/null || die "the member stopped: $(tail -5 "$work/member.log")"
    sleep 0.02
  done
  die "the member never became healthy"
}

consensus_pid() { awk '$1 == "consensus" {print $2}' "$data/member.pids" 2>/dev/null; }
rss_mib() { awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$(consensus_pid)/status"; }

# Nothing else may hold the address: the measurements would go to it.
if etcdctl --endpoints "http://$host:2379" --dial-timeout=1s endpoint health >/dev/null 2>&1; then
  die "something already serves $host:2379"
fi
start_member
printf '| puts | consensus RSS | WAL segments | WAL bytes | RocksDB bytes | clean restart | RSS after it |\n'
printf '|---:|---:|---:|---:|---:|---:|---:|\n'
done_puts=0
IFS=, read -ra targets <<<"$steps"
for target in "${targets[@]}"; do
  n=$((target - done_puts))
  ((n > 0)) || die "steps must grow"
  log "$n puts (to $target), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  "$bin/etcd-bench" --endpoints "$host:2379" --conns 10 --clients 100 --total "$n" \
    put --key-size 8 --val-size "$val" --key-space "$keys" >>"$work/bench.log" 2>&1 ||
    die "etcd-bench failed: $(tail -3 "$work/bench.log")"
  done_puts=$target
  sleep 2
  rss=$(rss_mib)
  segments=$(find "$data/wal" -name '*.wal' | wc -l)
  wal_bytes=$(du -sb "$data/wal" | cut -f1)
  db_bytes=$(du -sb "$data/db" | cut -f1)
  stop_member
  start_member
  sleep 1
  printf '| %s | %s MiB | %s | %s MB | %s MB | %s s | %s MiB |\n' "$target" "$rss" "$segments" \
    "$((wal_bytes / 1000000))" "$((db_bytes / 1000000))" "$took" "$(rss_mib)"
done
log "load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
