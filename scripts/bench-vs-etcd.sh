#!/usr/bin/env bash
# Side-by-side benchmark: a 3-member etcd 3.4 cluster and a 3-member cluster of ours on this
# machine, one after the other with the same topology (127.0.0.31/.32/.33, client port 2379, peer
# port 2380), the same workloads driven by the same load generator (etcd-bench, which speaks etcd's
# v3 gRPC API), several rounds with the order of the two systems alternating, and the median of
# each figure. Prints a side-by-side table with the ratio ours/etcd per row. Then, since a lone put
# is the noisiest row (the machine drifts more between two runs 40 s apart than the two systems
# differ), both clusters run at once (etcd on 127.0.0.36-38) and short bursts of lone puts
# alternate between them, and a second table gives the ratio within each pair of bursts.
#
#   scripts/bench-vs-etcd.sh [--out table.md] [--rounds 3] [--bursts 16] [--scale 1.0] [--no-build]
#                            [--bin-dir DIR] [--against DIR] [--halt-poll-ns N] [--keep]
#
#   --out FILE   also write the tables as markdown to FILE
#   --rounds N   rounds (each starts both clusters afresh and runs every workload on each); 0 skips
#   --bursts N   pairs of lone-put bursts (1000 puts each) with both clusters up; 0 skips them
#   --scale F    multiply every --total by F (the defaults aim at 5-10 s per run on 2 cores)
#   --no-build   use the release binaries as they are
#   --bin-dir D  take our binaries from D instead (implies --no-build; bench-smoke.sh runs this
#                script at a tiny size on the debug build)
#   --against D  an A/B test of ours against ours built earlier (binaries in D, e.g. a copy of
#                target/release) in etcd's place, labelled "base": the bursts, and the rounds'
#                workloads (reads, txns, loaded puts) when --rounds is given too
#   --halt-poll-ns N  for this run, let an idle vCPU of this (KVM guest) machine poll up to N ns
#                before it halts (cpuidle-haltpoll's guest_halt_poll_ns; upstream's default is
#                200000, some hosts boot with 0), restored afterwards. Both systems run under it.
#                Needs root and the haltpoll cpuidle driver. Without it the machine is measured as is.
#   --keep       keep the work dir (data dirs, logs, raw results) instead of deleting it
#
# Everything it starts is stopped by PID (also on Ctrl-C or failure). Binaries come from
# $CARGO_TARGET_DIR/release (or target/release) unless --bin-dir; etcd and etcdctl from PATH.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '%s bench-vs-etcd: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

out='' rounds='' bursts=16 scale=1 build=1 keep=0 bin='' against= halt_poll=''
while (($#)); do
  case $1 in
    --out) out=${2:?--out needs a file}; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    --rounds) rounds=${2:?--rounds needs a number}; shift 2 ;;
    --rounds=*) rounds=${1#--rounds=}; shift ;;
    --bursts) bursts=${2:?--bursts needs a number}; shift 2 ;;
    --bursts=*) bursts=${1#--bursts=}; shift ;;
    --scale) scale=${2:?--scale needs a number}; shift 2 ;;
    --scale=*) scale=${1#--scale=}; shift ;;
    --no-build) build=0; shift ;;
    --bin-dir) bin=${2:?--bin-dir needs a directory}; build=0; shift 2 ;;
    --bin-dir=*) bin=${1#--bin-dir=}; build=0; shift ;;
    --against) against=${2:?--against needs a directory}; shift 2 ;;
    --against=*) against=${1#--against=}; shift ;;
    --halt-poll-ns) halt_poll=${2:?--halt-poll-ns needs a number}; shift 2 ;;
    --halt-poll-ns=*) halt_poll=${1#--halt-poll-ns=}; shift ;;
    --keep) keep=1; shift ;;
    -h | --help) sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
if [[ -z $rounds ]]; then
  rounds=3
  [[ -n $against ]] && rounds=0
fi
[[ $rounds =~ ^[0-9]+$ ]] || die "--rounds must be a number, not $rounds"
[[ $bursts =~ ^[0-9]+$ ]] || die "--bursts must be a number, not $bursts"
# What ours is compared with: etcd, or with --against an earlier build of ours.
other=etcd
[[ -n $against ]] && other=base
((rounds + bursts)) || die "nothing to run: --rounds and --bursts are both 0"
[[ $scale =~ ^[0-9]*\.?[0-9]+$ ]] || die "--scale must be a positive number, not $scale"
halt_poll_file=/sys/module/haltpoll/parameters/guest_halt_poll_ns
halt_poll_was=''
if [[ -n $halt_poll ]]; then
  [[ $halt_poll =~ ^[0-9]+$ ]] || die "--halt-poll-ns must be a number of nanoseconds, not $halt_poll"
  [[ -w $halt_poll_file ]] || die "--halt-poll-ns: cannot write $halt_poll_file (needs root and the haltpoll cpuidle driver)"
fi
if [[ -n $out ]]; then
  : >"$out" 2>/dev/null || die "cannot write $out"
fi

[[ $other != etcd ]] || command -v etcd >/dev/null || die "etcd is not installed (apt-get install etcd-server)"
command -v etcdctl >/dev/null || die "etcdctl is not installed (apt-get install etcd-client)"
target=${CARGO_TARGET_DIR:-$repo/target}
[[ -n $bin ]] || bin=$target/release
if ((build)); then
  log "building release binaries in $target"
  (cd "$repo" && cargo build --release --bins) || die "the release build failed"
fi
for b in consensus peer-gateway client-gateway etcd-bench; do
  [[ -x $bin/$b ]] || die "missing $bin/$b: run cargo build --release --bins"
  [[ -z $against || -x $against/$b ]] || die "missing $against/$b (--against)"
done

hosts=(127.0.0.31 127.0.0.32 127.0.0.33)
# Where etcd (or the --against build) runs while both clusters are up, for the bursts.
burst_hosts=(127.0.0.36 127.0.0.37 127.0.0.38)
names=(b1 b2 b3)
client_endpoints() { local h out=''; for h in "$@"; do out+="${out:+,}$h:2379"; done; echo "$out"; }
endpoints=$(client_endpoints "${hosts[@]}")
burst_endpoints=$(client_endpoints "${burst_hosts[@]}")

# Nothing may hold our addresses already (a leftover cluster would be measured instead).
checked=("${hosts[@]}")
((bursts)) && checked+=("${burst_hosts[@]}")
for h in "${checked[@]}"; do
  for p in 2379 2380; do
    if command -v ss >/dev/null; then
      # TCP (etcd, client gateways) and UDP (our peer gateways' QUIC).
      ss -Hlntu 2>/dev/null | awk '{print $5}' | grep -qx "$h:$p" &&
        die "something already listens on $h:$p (see ss -lntup); stop it first"
    elif (exec 3<>"/dev/tcp/$h/$p") 2>/dev/null; then
      die "something already listens on $h:$p; stop it first"
    fi
  done
done

work=$(mktemp -d -t bench-vs-etcd.XXXXXX) || die "mktemp failed"
results=$work/results.tsv
: >"$results"

# PIDs of what runs now: etcd processes, or start-node.sh scripts (each stops its three processes
# on SIGTERM; their PIDs are also in <data-dir>/member.pids, for the SIGKILL fallback).
cluster_pids=()
member_dirs=()
bench_pid=''

stop_cluster() {
  local pids=("${cluster_pids[@]}") p extra=()
  for d in "${member_dirs[@]}"; do
    [[ -r $d/member.pids ]] || continue
    while read -r _ p; do [[ $p =~ ^[0-9]+$ ]] && extra+=("$p"); done <"$d/member.pids"
  done
  ((${#pids[@]})) || return 0
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 1 150); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "${pids[@]}" "${extra[@]}"; do kill -KILL "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  cluster_pids=()
  member_dirs=()
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n $bench_pid ]]; then
    kill -TERM "$bench_pid" 2>/dev/null
    wait "$bench_pid" 2>/dev/null
  fi
  stop_cluster
  if [[ -n $halt_poll_was ]]; then
    echo "$halt_poll_was" >"$halt_poll_file" && log "guest_halt_poll_ns back to $halt_poll_was"
  fi
  if ((keep)); then
    log "kept $work"
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
if [[ -n $halt_poll ]]; then
  halt_poll_was=$(<"$halt_poll_file")
  echo "$halt_poll" >"$halt_poll_file" || die "could not write $halt_poll_file"
  log "guest_halt_poll_ns $halt_poll_was -> $halt_poll for this run"
fi

# The initial cluster of three members on the given hosts.
initial_cluster() { echo "${names[0]}=http://$1:2380,${names[1]}=http://$2:2380,${names[2]}=http://$3:2380"; }

# start_etcd|start_ours DIR [HOST HOST HOST]: a cluster on the hosts (default: hosts). start_ours
# takes its binaries from $start_bin if set, else $bin.
start_etcd() {
  local dir=$1 i on=("${@:2}")
  ((${#on[@]})) || on=("${hosts[@]}")
  local initial_cluster
  initial_cluster=$(initial_cluster "${on[@]}")
  for i in 0 1 2; do
    local h=${on[i]}
    mkdir -p "$dir"
    etcd --name "${names[i]}" --data-dir "$dir/${names[i]}" \
      --listen-client-urls "http://$h:2379" --advertise-client-urls "http://$h:2379" \
      --listen-peer-urls "http://$h:2380" --initial-advertise-peer-urls "http://$h:2380" \
      --initial-cluster "$initial_cluster" --initial-cluster-token bench-vs-etcd \
      --initial-cluster-state new >"$dir/${names[i]}.log" 2>&1 &
    cluster_pids+=($!)
  done
}

start_ours() {
  local dir=$1 i on=("${@:2}")
  ((${#on[@]})) || on=("${hosts[@]}")
  local initial_cluster
  initial_cluster=$(initial_cluster "${on[@]}")
  for i in 0 1 2; do
    local h=${on[i]}
    mkdir -p "$dir"
    ETCDRS_BIN_DIR=${start_bin:-$bin} "$repo/scripts/start-node.sh" --name "${names[i]}" --data-dir "$dir/${names[i]}" \
      --listen-client-urls "http://$h:2379" --advertise-client-urls "http://$h:2379" \
      --listen-peer-urls "http://$h:2380" --initial-advertise-peer-urls "http://$h:2380" \
      --initial-cluster "$initial_cluster" --initial-cluster-token bench-vs-etcd \
      --initial-cluster-state new >"$dir/${names[i]}.log" 2>&1 &
    cluster_pids+=($!)
    member_dirs+=("$dir/${names[i]}")
  done
}

# wait_ready SYSTEM DIR [ENDPOINTS]: every member answers, and a write goes through (so there is
# a leader).
wait_ready() {
  local system=$1 dir=$2 endpoints=${3:-$endpoints}
  for _ in $(seq 1 300); do
    for p in "${cluster_pids[@]}"; do
      kill -0 "$p" 2>/dev/null || { tail -n 20 "$dir"/*.log >&2; die "$system: a member exited while starting"; }
    done
    if ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --dial-timeout=1s --command-timeout=2s \
      endpoint health >/dev/null 2>&1 &&
      ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --dial-timeout=1s --command-timeout=2s \
        put bench-vs-etcd-probe ready >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  tail -n 20 "$dir"/*.log >&2
  die "$system: the cluster did not become ready within 60 s"
}

total() { awk -v n="$1" -v s="$scale" 'BEGIN { t = int(n * s); print (t < 1 ? 1 : t) }'; }

# row name | endpoints (all, leader or follower) | flags. 8-byte keys, 256-byte values, random
# keys of 10000 (the puts fill the key space before the ranges read it). A lone put is 10-25%
# slower through a follower in both systems, and which member leads is random, so those rows name
# the member they go to: comparing one system's leader with the other's follower measured luck.
rows=(
  "put 1 conn / 1 client, via the leader|leader|--conns 1 --clients 1 --total $(total 5000) put"
  "put 1 conn / 1 client, via a follower|follower|--conns 1 --clients 1 --total $(total 5000) put"
  "put 10 conns / 100 clients|all|--conns 10 --clients 100 --total $(total 80000) put"
  "range linearizable 10 / 100|all|--conns 10 --clients 100 --total $(total 100000) range --consistency l"
  "range serializable 10 / 100|all|--conns 10 --clients 100 --total $(total 150000) range --consistency s"
  "txn-put 10 / 100|all|--conns 10 --clients 100 --total $(total 50000) txn-put"
)

# bench ENDPOINTS FLAGS...: one etcd-bench run (8-byte keys, 256-byte values, 10000 keys); its
# JSON line goes to $json. Fails if it printed none.
bench() {
  local eps=$1
  shift
  # In the background, so that a signal to this script is handled at once (wait returns).
  "$bin/etcd-bench" --endpoints "$eps" --key-size 8 --val-size 256 --key-space 10000 "$@" \
    >"$work/bench.out" 2>&1 &
  bench_pid=$!
  wait "$bench_pid"
  bench_pid=''
  json=$(grep '^{' "$work/bench.out" | tail -n 1)
  grep -h '  error' "$work/bench.out" >&2
  [[ $json == '{'* ]]
}

# roles ENDPOINTS: sets leader and follower to one client endpoint each (empty if none).
roles() {
  local status
  status=$(ETCDCTL_API=3 etcdctl --endpoints="$1" --dial-timeout=1s --command-timeout=2s \
    endpoint status 2>/dev/null)
  leader=$(awk -F', ' '$5 == "true" {print $1; exit}' <<<"$status")
  follower=$(awk -F', ' '$5 == "false" {print $1; exit}' <<<"$status")
}

json_field() { sed -n "s/.*\"$2\":\([-0-9.]*\).*/\1/p" <<<"$1"; }

run_system() {
  local system=$1 round=$2 dir=$work/$1-round$2 row
  log "round $round: starting $system"
  case $system in
    etcd) start_etcd "$dir" ;;
    base) start_bin=$against start_ours "$dir" ;;
    *) start_ours "$dir" ;;
  esac
  wait_ready "$system" "$dir"
  local leader follower
  roles "$endpoints"
  log "round $round $system: leader ${leader:-unknown}, follower ${follower:-unknown}"
  for row in "${rows[@]}"; do
    local name=${row%%|*} rest=${row#*|} json
    local to=${rest%%|*} flags=${rest#*|} eps=$endpoints
    case $to in
      leader) eps=$leader ;;
      follower) eps=$follower ;;
    esac
    if [[ -z $eps ]]; then
      log "round $round $system '$name': no $to found; skipped"
      continue
    fi
    # shellcheck disable=SC2086 # flags are words on purpose
    if ! bench "$eps" $flags; then
      log "round $round $system '$name': etcd-bench failed: $(tail -n 3 "$work/bench.out")"
      continue
    fi
    local rps p99 errors
    rps=$(json_field "$json" rps) p99=$(json_field "$json" p99_ms) errors=$(json_field "$json" errors)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$system" "$name" "$rps" "$p99" "$errors" >>"$results"
    log "round $round $system '$name': $rps req/s, p99 $p99 ms${errors:+, $errors errors}"
    echo "$json" >>"$work/raw.jsonl"
  done
  if [[ $system != etcd ]] && grep -q "restarting it" "$dir"/*.log 2>/dev/null; then
    log "round $round: warning: a gateway of ours was restarted during the run (see $dir)"
  fi
  stop_cluster
  ((keep)) || rm -rf "$dir"
}

log "work dir $work; $rounds rounds; endpoints $endpoints"
for round in $(seq 1 "$rounds"); do
  log "round $round: load average $(cut -d' ' -f1-3 /proc/loadavg)"
  if ((round % 2)); then order=("$other" ours); else order=(ours "$other"); fi
  for system in "${order[@]}"; do run_system "$system" "$round"; done
done

# Lone puts in bursts, both clusters up: pairs of bursts seconds apart, not rounds a minute apart.
bursts_results=$work/bursts.tsv
: >"$bursts_results"
burst_size=$(total 1000)
# burst_half FIRST LAST OURS_HOSTS OTHER_HOSTS: both clusters up on those hosts (3 each, space
# separated), then pairs FIRST..LAST. The second half swaps the hosts, so that neither system keeps
# whatever the addresses or the leaders' placement are worth.
burst_half() {
  local first=$1 last=$2 ours_on=($3) other_on=($4) b to system eps order
  local ours_eps other_eps dir
  ours_eps=$(client_endpoints "${ours_on[@]}") other_eps=$(client_endpoints "${other_on[@]}")
  dir=$work/bursts-$first
  start_ours "$dir/ours" "${ours_on[@]}"
  if [[ $other == etcd ]]; then
    start_etcd "$dir/etcd" "${other_on[@]}"
  else
    start_bin=$against start_ours "$dir/$other" "${other_on[@]}"
  fi
  wait_ready ours "$dir/ours" "$ours_eps"
  wait_ready "$other" "$dir/$other" "$other_eps"
  declare -A burst_to=()
  roles "$ours_eps"
  burst_to[ours,leader]=$leader burst_to[ours,follower]=$follower
  roles "$other_eps"
  burst_to[$other,leader]=$leader burst_to[$other,follower]=$follower
  log "bursts $first-$last: ours on ${ours_on[*]} (leader ${burst_to[ours,leader]:-unknown}), $other on ${other_on[*]} (leader ${burst_to[$other,leader]:-unknown})"
  # A warm-up, so that neither system's first burst writes into an empty key space.
  for system in ours "$other"; do
    [[ -n ${burst_to[$system,leader]} ]] &&
      bench "${burst_to[$system,leader]}" --total "$(total 5000)" --conns 10 --clients 10 put
  done
  for b in $(seq "$first" "$last"); do
    if ((b % 2)); then order=("$other" ours); else order=(ours "$other"); fi
    for to in leader follower; do
      for system in "${order[@]}"; do
        eps=${burst_to[$system,$to]}
        [[ -n $eps ]] || continue
        if bench "$eps" --conns 1 --clients 1 --total "$burst_size" put; then
          printf '%s\t%s\t%s\t%s\t%s\n' "$b" "$system" "$to" "$(json_field "$json" rps)" \
            "$(json_field "$json" p99_ms)" >>"$bursts_results"
        else
          log "burst $b $system via the $to: etcd-bench failed: $(tail -n 3 "$work/bench.out")"
        fi
      done
    done
  done
  stop_cluster
  ((keep)) || rm -rf "$dir"
}

if ((bursts)); then
  log "bursts: $bursts pairs of $burst_size lone puts with both clusters up, ours and $other swapping hosts halfway"
  half=$(((bursts + 1) / 2))
  burst_half 1 "$half" "${hosts[*]}" "${burst_hosts[*]}"
  ((bursts > half)) && burst_half $((half + 1)) "$bursts" "${burst_hosts[*]}" "${hosts[*]}"
  log "bursts: done"
fi

# Helpers both tables use: the median of a space-separated list, a number or n/a.
awk_lib='
  function median(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    if (n == 0) return ""
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  function num(x, f) { return (x == "") ? "n/a" : sprintf(f, x) }
'

# Medians per system and row, the spread (max-min over the median, for req/s), and the table.
table=$(awk -F'\t' -v rounds="$rounds" -v other="$other" "$awk_lib"'
  function spread(list,   a, n, i, lo, hi, m) {
    n = split(list, a, " "); if (n < 2) return ""
    lo = hi = a[1]; for (i = 2; i <= n; i++) { if (a[i] + 0 < lo + 0) lo = a[i]; if (a[i] + 0 > hi + 0) hi = a[i] }
    m = median(list); return (m > 0) ? sprintf("%.0f%%", 100 * (hi - lo) / m) : ""
  }
  function ratio(a, b) { return (a != "" && b != "" && b > 0) ? sprintf("%.2fx", a / b) : "n/a" }
  {
    if (!($3 in seen)) { seen[$3] = 1; order[++nrows] = $3 }
    rps[$2, $3] = rps[$2, $3] " " $4; p99[$2, $3] = p99[$2, $3] " " $5; errs[$2, $3] += $6
    in_round[$1, $2, $3] = $4
  }
  # Each round ran both systems back to back, so the ratio within a round cancels the drift of
  # the machine between rounds: the median of those ratios, and in how many rounds ours was ahead.
  function paired(n,   k, list, ahead, count) {
    list = ""; ahead = 0; count = 0
    for (k = 1; k <= rounds; k++) {
      if (!((k, other, n) in in_round) || !((k, "ours", n) in in_round) || in_round[k, other, n] <= 0) continue
      list = list " " in_round[k, "ours", n] / in_round[k, other, n]; count++
      if (in_round[k, "ours", n] > in_round[k, other, n]) ahead++
    }
    return (count == 0) ? "n/a" : sprintf("%.2fx (%d of %d)", median(list), ahead, count)
  }
  END {
    print "| workload | " other " req/s | ours req/s | ours/" other " | per round (ours ahead) | " other " p99 ms | ours p99 ms | ours/" other " p99 | spread " other " / ours |"
    print "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for (r = 1; r <= nrows; r++) {
      n = order[r]
      er = median(rps[other, n]); orr = median(rps["ours", n])
      ep = median(p99[other, n]); op = median(p99["ours", n])
      note = ""
      if (errs[other, n] > 0) note = note sprintf(" (" other ": %d errors)", errs[other, n])
      if (errs["ours", n] > 0) note = note sprintf(" (ours: %d errors)", errs["ours", n])
      printf "| %s%s | %s | %s | %s | %s | %s | %s | %s | %s / %s |\n", n, note, num(er, "%.0f"), num(orr, "%.0f"), ratio(orr, er), paired(n), num(ep, "%.2f"), num(op, "%.2f"), ratio(op, ep), spread(rps[other, n]), spread(rps["ours", n])
    }
  }' "$results")

# The bursts: medians per system, and the ratio within each pair of bursts.
bursts_table=$(awk -F'\t' -v size="$burst_size" -v other="$other" "$awk_lib"'
  # The sign test: the chance that ours leads in `ahead` or more of `n` pairs if both systems were
  # equally fast, so that each pair is a coin toss (one-sided binomial tail).
  function sign_test(ahead, n,   k, pk, tail) {
    pk = 2 ^ -n; tail = 0
    for (k = 0; k <= n; k++) { if (k >= ahead) tail += pk; pk = pk * (n - k) / (k + 1) }
    return tail
  }
  {
    rps[$2, $3] = rps[$2, $3] " " $4; p99[$2, $3] = p99[$2, $3] " " $5; in_pair[$1, $2, $3] = $4
    if ($1 > last) last = $1
  }
  END {
    print "| lone put (" size " per burst) | " other " req/s | ours req/s | ours/" other " per pair | lowest / highest pair | ours ahead | p | " other " p99 ms | ours p99 ms |"
    print "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    split("leader follower", paths, " ")
    for (k = 1; k <= 2; k++) {
      to = paths[k]; list = ""; ahead = 0; count = 0; lo = ""; hi = ""
      for (b = 1; b <= last; b++) {
        if (!((b, other, to) in in_pair) || !((b, "ours", to) in in_pair) || in_pair[b, other, to] <= 0) continue
        r = in_pair[b, "ours", to] / in_pair[b, other, to]; list = list " " r; count++
        if (r > 1) ahead++
        if (lo == "" || r < lo) lo = r
        if (hi == "" || r > hi) hi = r
      }
      if (count == 0) continue
      printf "| via %s | %s | %s | %.3fx | %.2fx / %.2fx | %d of %d | %.2g | %s | %s |\n", (to == "leader") ? "the leader" : "a follower", num(median(rps[other, to]), "%.0f"), num(median(rps["ours", to]), "%.0f"), median(list), lo, hi, ahead, count, sign_test(ahead, count), num(median(p99[other, to]), "%.2f"), num(median(p99["ours", to]), "%.2f")
    }
  }' "$bursts_results")

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
disk=$(df -h --output=source,fstype "$work" 2>/dev/null | tail -n 1 | tr -s ' ')
# An idle vCPU that halts takes tens of microseconds to wake; what it may poll first matters.
halt_note=''
[[ -r $halt_poll_file ]] && halt_note=", guest_halt_poll_ns $(<"$halt_poll_file")$([[ -n $halt_poll ]] && echo " for this run")"
header="Medians of $rounds rounds, $(date -u +%Y-%m-%d), $(nproc) cores ($cpu$halt_note), disk $disk, etcd $(etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p'), ours $(git -C "$repo" rev-parse --short HEAD 2>/dev/null)$(git -C "$repo" diff --quiet 2>/dev/null || echo '+changes')$([[ $bin == "$target/release" ]] || echo " (binaries from $bin)"). 3 members on 127.0.0.31-33, etcd-bench with all three endpoints (put 1/1: the leader's or a follower's, as named), 8-byte keys, 256-byte values, 10000 keys. Ratios: ours/etcd (req/s: higher is better; p99: lower is better). Per round: the median over the rounds of ours/etcd req/s within each round (both systems run back to back), and in how many rounds ours was ahead. Spread: (max-min)/median of req/s over the rounds.$([[ $other == etcd ]] || echo " In etcd's place: base, our binaries from $against (ratios are ours/base).")"
bursts_header="Lone puts$([[ -n $halt_poll ]] && echo " (guest_halt_poll_ns $halt_poll for this run)") with both clusters up (ours on ${hosts[*]} and $other on ${burst_hosts[*]}, then both restarted on each other's hosts halfway$([[ $other == etcd ]] || echo "; $other: binaries from $against"); the idle one only heartbeats): $bursts pairs of bursts of $burst_size puts, one system then the other, which goes first alternating; through each system's leader, then a follower. Medians over the bursts; per pair: the median of ours/$other req/s within each pair of bursts, which run seconds apart. p: the chance that ours leads in that many pairs or more if both were equally fast (sign test); below 0.05, ours is faster."
report=''
((rounds)) && report=$(printf '%s\n\n%s\n' "$header" "$table")
if [[ -n $bursts_table && $bursts_table == *'| via '* ]]; then
  report+=$(printf '%s%s\n\n%s\n' "${report:+$'\n\n'}" "$bursts_header" "$bursts_table")
fi
echo
echo "$report"
if [[ -n $out ]]; then
  echo "$report" >"$out"
  log "tables written to $out"
fi
