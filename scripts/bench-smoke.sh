#!/usr/bin/env bash
# Proves that every benchmark still runs, at a tiny size (speed is not checked here): the three
# per-process benchmarks with --quick, then etcd-bench against one member of ours (127.0.0.35) for
# a few hundred requests of each workload, then scripts/bench-vs-etcd.sh at a tiny size (127.0.0.31-33
# and .36-38). Exits non-zero on the first failure.
#
#   scripts/bench-smoke.sh              # debug builds (what scripts/test.sh builds anyway)
#   scripts/bench-smoke.sh --release    # release builds
#
# The member it starts is stopped by PID, also on failure or Ctrl-C.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
log() { printf '%s bench-smoke: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

profile=dev dir=debug release=()
case ${1:-} in
  --release) profile=release dir=release release=(--release) ;;
  '') ;;
  *) log "unknown argument $1 (only --release)"; exit 2 ;;
esac
target=${CARGO_TARGET_DIR:-$repo/target}
bin=$target/$dir

cargo build --workspace --bins "${release[@]}"
# `--profile` puts the benchmarks next to the binaries they start (target/debug or target/release).
for bench in consensus:consensus_plane peer-gateway:peer_gateway client-gateway:client_gateway; do
  log "cargo bench -p ${bench%%:*} --bench ${bench#*:} -- --quick"
  timeout 300 cargo bench --profile "$profile" -p "${bench%%:*}" --bench "${bench#*:}" -- --quick
done

work=$(mktemp -d -t bench-smoke.XXXXXX)
member=''
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  set +e
  if [[ -n $member ]]; then
    kill -TERM "$member" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$member" 2>/dev/null || break; sleep 0.1; done
    # What is still running after 10 s: the script and the three processes it recorded.
    if [[ -r $work/m/member.pids ]]; then
      while read -r _ p; do [[ $p =~ ^[0-9]+$ ]] && kill -KILL "$p" 2>/dev/null; done <"$work/m/member.pids"
    fi
    kill -KILL "$member" 2>/dev/null
    wait "$member" 2>/dev/null
  fi
  if ((status)) && [[ -r $work/member.log ]]; then
    log "member log tail:"; tail -n 20 "$work/member.log" >&2
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

host=127.0.0.35
# A leftover member on our address would be measured instead of ours.
if command -v ss >/dev/null && ss -Hlntu 2>/dev/null | awk '{print $5}' | grep -qE "^$host:(2379|2380)$"; then
  log "something already listens on $host:2379 or :2380 (see ss -lntup); stop it first"
  exit 1
fi
ETCDRS_BIN_DIR=$bin scripts/start-node.sh --name smoke --data-dir "$work/m" \
  --listen-client-urls "http://$host:2379" --advertise-client-urls "http://$host:2379" \
  --listen-peer-urls "http://$host:2380" --initial-advertise-peer-urls "http://$host:2380" \
  --initial-cluster "smoke=http://$host:2380" >"$work/member.log" 2>&1 &
member=$!

bench() { "$bin/etcd-bench" --endpoints "$host:2379" --key-size 8 --val-size 256 --key-space 100 "$@"; }
# Ready when a put goes through.
for i in $(seq 1 150); do
  bench --total 1 put >/dev/null 2>&1 && break
  kill -0 "$member" 2>/dev/null || { log "the member exited while starting"; exit 1; }
  ((i < 150)) || { log "the member did not answer within 30 s"; exit 1; }
  sleep 0.2
done
for workload in "put" "range --consistency l" "range --consistency s" "txn-put"; do
  log "etcd-bench $workload"
  # shellcheck disable=SC2086 # the workload is words on purpose
  out=$(bench --conns 2 --clients 8 --total 300 $workload)
  grep -q '^{"op":.*"errors":0,' <<<"$out" || { log "etcd-bench $workload: $out"; exit 1; }
  tail -n 1 <<<"$out"
done
# A refused request is counted and reported with etcd's gRPC status and message.
if out=$("$bin/etcd-bench" --endpoints "$host:2379" --total 1 --val-size 1600000 put); then
  log "etcd-bench should fail on a request above etcd's 1.5 MiB limit: $out"; exit 1
fi
grep -q 'error (1x): InvalidArgument: etcdserver: request is too large' <<<"$out" \
  || { log "etcd-bench did not report the gRPC status of a refused put: $out"; exit 1; }
if bench watch-latency >/dev/null 2>&1; then
  log "etcd-bench watch-latency should say it is not supported yet"; exit 1
fi
# The side-by-side script itself, at a tiny size: every row of both tables, with figures for both.
log "scripts/bench-vs-etcd.sh at a tiny size"
scripts/bench-vs-etcd.sh --bin-dir "$bin" --rounds 1 --bursts 2 --scale 0.02 --out "$work/vs.md" >/dev/null
for row in "put 1 conn / 1 client, via the leader" "put 1 conn / 1 client, via a follower" \
  "put 10 conns / 100 clients" "range linearizable 10 / 100" "range serializable 10 / 100" \
  "txn-put 10 / 100" "via the leader" "via a follower"; do
  grep -qF "| $row |" "$work/vs.md" || { log "bench-vs-etcd.sh: no row '$row':"; cat "$work/vs.md" >&2; exit 1; }
done
if grep -q 'n/a' "$work/vs.md"; then
  log "bench-vs-etcd.sh: a run failed:"; cat "$work/vs.md" >&2; exit 1
fi
log "all benchmarks ran"
