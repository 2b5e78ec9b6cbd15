#!/usr/bin/env bash
# What a member's whole state costs to copy, ours side by side with etcd 3.4: `etcdctl snapshot
# save` and the raft snapshot a follower behind the compacted log gets.
#
#   scripts/bench-snapshot.sh [--bin-dir DIR] [--state-mib 1024] [--val-size 8192] [--runs 3]
#                             [--behind-puts 5000] [--etcd-behind-puts 10000]
#                             [--parts save,raft,etcd-raft] [--load-total 20000] [--out FILE]
#                             [--work DIR] [--keep]
#
# 1. save: one member of ours (127.0.0.141) and one etcd (127.0.0.142), each loaded with
#    --state-mib MiB of values of --val-size bytes under distinct keys (etcd-bench, 10 conns /
#    100 clients); then --runs times each (the order alternating) `etcdctl snapshot save FILE`:
#    its time, the file's size, and the RSS of the member's processes (ours: consensus and the
#    client gateway; etcd: its one process) before and at the peak during the save (VmRSS and
#    RssAnon from /proc/PID/status every 50 ms; VmHWM, reset before each save, is logged too).
# 2. raft: three members of ours on 127.0.0.143-145 with --snapshot-count 1000
#    --snapshot-catchup-entries 100 (etcd.conf files run by scripts/start-node.sh), loaded the
#    same way. Twice: a follower is stopped (SIGTERM to its start-node.sh), --behind-puts small
#    puts go through the leader, and the follower is started again; the first time with nothing
#    else running ("quiet"), the second time with a put load through the leader (etcd-bench,
#    10 conns / 100 clients, 256-byte values, runs of --load-total puts one after the other with
#    every answer's time and latency kept) from the follower's start until it has the revision
#    the leader had when the follower installed the snapshot (through a second snapshot, if it
#    needed one), and the same load just before (baseline, all three members up and in sync)
#    and after (caught up). Timings come from the members' logs (RFC 3339 timestamps): the leader's
#    `the peer gateway is sending a raft snapshot` (the image's bytes=), the follower's
#    `receiving a raft snapshot`, `raft snapshot install committed` and `installed a raft
#    snapshot`; the end of the stream is the last change of the follower's snap/incoming-* file
#    (polled every 50 ms); caught up is the follower's revision (etcdctl endpoint status) equal
#    to the leader's, polled every 100 ms.
# 3. etcd-raft: the same with a 3-member etcd on 127.0.0.143-145 with --snapshot-count 1000 (its
#    catch-up entries are fixed at 5000 in 3.4, hence --etcd-behind-puts 10000), from its zap
#    logs: `sending database snapshot`, `receiving database snapshot`, `received and saved
#    database snapshot`, `applied snapshot`.
#
# Markdown tables go to stdout (and --out FILE), progress to stderr. Binaries (consensus,
# peer-gateway, client-gateway, etcd-bench) come from --bin-dir (default
# $CARGO_TARGET_DIR/release, else target/release; not built here), etcd and etcdctl from PATH.
# Everything started is stopped by PID (also on Ctrl-C or failure); the work dir (default under
# /tmp, several times --state-mib of disk) goes unless --keep.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '%s bench-snapshot: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

bin='' state_mib=1024 val=8192 runs=3 behind=5000 etcd_behind=10000 parts=save,raft,etcd-raft
load_total=20000 out='' work='' keep=0
while (($#)); do
  case $1 in
    --bin-dir) bin=${2:?--bin-dir needs a directory}; shift 2 ;;
    --state-mib) state_mib=${2:?}; shift 2 ;;
    --val-size) val=${2:?}; shift 2 ;;
    --runs) runs=${2:?}; shift 2 ;;
    --behind-puts) behind=${2:?}; shift 2 ;;
    --etcd-behind-puts) etcd_behind=${2:?}; shift 2 ;;
    --parts) parts=${2:?}; shift 2 ;;
    --load-total) load_total=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    --work) work=${2:?}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
for n in "$state_mib" "$val" "$runs" "$behind" "$etcd_behind" "$load_total"; do
  [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || die "numbers must be positive integers, not $n"
done
want() { [[ ,$parts, == *,$1,* ]]; }
for p in ${parts//,/ }; do
  case $p in save | raft | etcd-raft) ;; *) die "unknown part $p (save, raft, etcd-raft)" ;; esac
done
target=${CARGO_TARGET_DIR:-$repo/target}
[[ -n $bin ]] || bin=$target/release
for b in consensus peer-gateway client-gateway etcd-bench; do
  [[ -x $bin/$b ]] || die "missing $bin/$b: cargo build --release --workspace --bins, or --bin-dir"
done
bin=$(cd "$bin" && pwd)
command -v etcdctl >/dev/null || die "etcdctl is not installed (bash scripts/setup.sh)"
if want save || want etcd-raft; then
  command -v etcd >/dev/null || die "etcd is not installed (bash scripts/setup.sh)"
fi
command -v jq >/dev/null || die "jq is needed"
if [[ -n $out ]]; then
  : >"$out" 2>/dev/null || die "cannot write $out"
fi

single_ours=127.0.0.141 single_etcd=127.0.0.142
cluster_hosts=(127.0.0.143 127.0.0.144 127.0.0.145)
hosts=()
want save && hosts+=("$single_ours" "$single_etcd")
{ want raft || want etcd-raft; } && hosts+=("${cluster_hosts[@]}")
# Nothing may hold the addresses already: the measurements would go to it.
for h in "${hosts[@]}"; do
  for p in 2379 2380; do
    ss -Hlntu 2>/dev/null | awk '{print $5}' | grep -qx "$h:$p" &&
      die "something already listens on $h:$p (see ss -lntup); stop it first"
  done
done

[[ -n $work ]] || work=$(mktemp -d /tmp/bench-snapshot.XXXXXX) || die "mktemp failed"
mkdir -p "$work" || die "cannot make $work"
work=$(cd "$work" && pwd)
# One value's bytes and the puts that write --state-mib MiB of them.
fill_puts=$((state_mib * 1048576 / val))

# What runs: members by name (node_pid: start-node.sh or etcd; node_dir: data dir; node_kind: ours
# or etcd), and helpers in the background (samplers, pollers, load), each stopped by its PID.
declare -A node_pid=() node_dir=() node_kind=() node_host=() node_conf=() node_log=() node_args=()
helpers=()

# Stops member NAME: SIGTERM to its start-node.sh (which stops its three processes) or etcd,
# up to 30 s, then SIGKILL to it and to the processes in member.pids.
stop_node() {
  local name=$1 pid=${node_pid[$1]:-} p extra=()
  [[ -n $pid ]] || return 0
  if [[ -r ${node_dir[$name]}/member.pids ]]; then
    while read -r _ p; do [[ $p =~ ^[0-9]+$ && $p != "$pid" ]] && extra+=("$p"); done <"${node_dir[$name]}/member.pids"
  fi
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  # start-node.sh waits for its processes; make sure of them anyway.
  for p in "${extra[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  node_pid[$name]=''
}

stop_helpers() {
  local p
  for p in "${helpers[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${helpers[@]}"; do wait "$p" 2>/dev/null; done
  helpers=()
}

# Stops one helper by PID.
stop_helper() {
  local p=$1 rest=() h
  kill -TERM "$p" 2>/dev/null
  wait "$p" 2>/dev/null
  for h in "${helpers[@]}"; do [[ $h == "$p" ]] || rest+=("$h"); done
  helpers=("${rest[@]}")
}

cleanup() {
  local status=$? name
  trap - EXIT INT TERM
  stop_helpers
  for name in "${!node_pid[@]}"; do stop_node "$name"; done
  if ((keep)); then
    log "kept $work"
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# Runs a command in the background and waits for it, so that a signal to this script is
# handled at once; its status is the command's.
run_fg() {
  "$@" &
  local p=$!
  helpers+=("$p")
  wait "$p"
  local status=$?
  stop_helper "$p"
  return "$status"
}

# start_ours NAME HOST CLUSTER DIR [etcd.conf lines]: a member of ours from an etcd.conf file.
start_ours() {
  local name=$1 host=$2 cluster=$3 dir=$4 extra=${5:-}
  mkdir -p "$dir"
  local conf=$dir/$name.conf
  if [[ ! -e $conf ]]; then
    printf '%s\n' "ETCD_NAME=\"$name\"" "ETCD_DATA_DIR=\"$dir/$name\"" \
      "ETCD_LISTEN_CLIENT_URLS=\"http://$host:2379\"" "ETCD_ADVERTISE_CLIENT_URLS=\"http://$host:2379\"" \
      "ETCD_LISTEN_PEER_URLS=\"http://$host:2380\"" "ETCD_INITIAL_ADVERTISE_PEER_URLS=\"http://$host:2380\"" \
      "ETCD_INITIAL_CLUSTER=\"$cluster\"" "ETCD_INITIAL_CLUSTER_TOKEN=\"bench-snapshot\"" >"$conf"
    [[ -n $extra ]] && printf '%s\n' "$extra" >>"$conf"
  fi
  node_kind[$name]=ours node_host[$name]=$host node_dir[$name]=$dir/$name node_conf[$name]=$conf
  node_log[$name]=$dir/$name.log
  ETCDRS_BIN_DIR=$bin "$repo/scripts/start-node.sh" "$conf" </dev/null >>"$dir/$name.log" 2>&1 &
  node_pid[$name]=$!
}

# start_etcd NAME HOST CLUSTER DIR [etcd flags...]
start_etcd() {
  local name=$1 host=$2 cluster=$3 dir=$4
  shift 4
  mkdir -p "$dir"
  node_kind[$name]=etcd node_host[$name]=$host node_dir[$name]=$dir/$name node_log[$name]=$dir/$name.log
  node_args[$name]="$*"
  # 8 GiB of quota (etcd's suggested maximum): the default 2 GiB would raise NOSPACE before
  # 1 GiB of values in bbolt's pages is written.
  # shellcheck disable=SC2086 # the extra flags are words on purpose
  etcd --name "$name" --data-dir "$dir/$name" \
    --listen-client-urls "http://$host:2379" --advertise-client-urls "http://$host:2379" \
    --listen-peer-urls "http://$host:2380" --initial-advertise-peer-urls "http://$host:2380" \
    --initial-cluster "$cluster" --initial-cluster-token bench-snapshot --initial-cluster-state new \
    --quota-backend-bytes 8589934592 --logger zap --log-outputs stderr $* \
    </dev/null >>"$dir/$name.log" 2>&1 &
  node_pid[$name]=$!
}

# restart_node NAME: starts a stopped member again on its data dir, as it was started.
restart_node() {
  local name=$1
  case ${node_kind[$name]} in
    ours)
      ETCDRS_BIN_DIR=$bin "$repo/scripts/start-node.sh" "${node_conf[$name]}" </dev/null >>"${node_log[$name]}" 2>&1 &
      node_pid[$name]=$!
      ;;
    etcd)
      local dir host=${node_host[$name]} cluster
      dir=$(dirname "${node_dir[$name]}")
      cluster=$(<"$dir/cluster")
      # shellcheck disable=SC2086
      start_etcd "$name" "$host" "$cluster" "$dir" ${node_args[$name]}
      ;;
  esac
}

ctl() { ETCDCTL_API=3 etcdctl --dial-timeout=1s --command-timeout=5s "$@"; }

# wait_ready NAME...: each answers /health through etcdctl, and a put goes through.
wait_ready() {
  local name ok
  for _ in $(seq 1 600); do
    ok=1
    for name in "$@"; do
      kill -0 "${node_pid[$name]}" 2>/dev/null || { tail -n 20 "${node_log[$name]}" >&2; die "$name exited while starting"; }
      ctl --endpoints "${node_host[$name]}:2379" endpoint health >/dev/null 2>&1 || ok=0
    done
    if ((ok)) && ctl --endpoints "${node_host[$1]}:2379" put bench-snapshot-probe ready >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  die "the members $* did not become ready within 120 s"
}

revision() { ctl --endpoints "$1:2379" endpoint status -w json 2>/dev/null | jq -r '.[0].Status.header.revision // empty' 2>/dev/null; }
db_size() { ctl --endpoints "$1:2379" endpoint status -w json 2>/dev/null | jq -r '.[0].Status.dbSize // empty' 2>/dev/null; }
is_leader() { ctl --endpoints "$1:2379" endpoint status 2>/dev/null | awk -F', ' '{print $5}'; }

# PIDs of a member's processes by role: consensus, peer-gateway, client-gateway (ours) or etcd.
proc_pid() {
  local name=$1 role=$2
  if [[ ${node_kind[$name]} == etcd ]]; then
    echo "${node_pid[$name]}"
  else
    awk -v r="$role" '$1 == r {print $2}' "${node_dir[$name]}/member.pids" 2>/dev/null
  fi
}

# rss_sampler OUT PID...: every 50 ms, "time pid VmRSS RssAnon" (KiB) per PID, until stopped.
rss_sampler() {
  local out=$1 p k v rss anon
  shift
  while :; do
    for p in "$@"; do
      rss='' anon=''
      while read -r k v _; do
        case $k in VmRSS:) rss=$v ;; RssAnon:) anon=$v ;; esac
      done 2>/dev/null <"/proc/$p/status"
      [[ -n $rss ]] && echo "$EPOCHREALTIME $p $rss $anon"
    done
    sleep 0.05
  done >>"$out"
}
start_sampler() { rss_sampler "$@" & helpers+=($!); sampler_pid=$!; }
# peak FILE PID COLUMN: the largest value of a column (3 VmRSS, 4 RssAnon) in MiB.
peak() { awk -v p="$2" -v c="$3" '$2 == p && $c + 0 > m {m = $c + 0} END {printf "%.0f", m / 1024}' "$1"; }
rss_now() { awk -v f="$2:" '$1 == f {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null; }

# settle PID...: waits (up to 120 s) until these processes used under 5% of a core for a second.
settle() {
  local p t0 t1 used
  for _ in $(seq 1 120); do
    t0=0 t1=0
    for p in "$@"; do t0=$((t0 + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
    sleep 1
    for p in "$@"; do t1=$((t1 + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
    used=$((t1 - t0))
    ((used * 100 < 5 * $(getconf CLK_TCK))) && return 0
  done
  log "warning: processes $* still busy after 120 s"
}

bench() {
  local eps=$1 outf=$2
  shift 2
  run_fg "$bin/etcd-bench" --endpoints "$eps" "$@" >"$outf" 2>&1
  local status=$?
  grep -q '^{' "$outf" || { log "etcd-bench failed: $(tail -n 3 "$outf")"; return 1; }
  ((status == 0)) || log "etcd-bench reported errors: $(grep -m 3 error "$outf")"
  return 0
}
json_field() { grep '^{' "$1" | tail -n 1 | jq -r ".$2"; }

# fill ENDPOINTS LABEL: --state-mib MiB of --val-size values under distinct random keys (16-byte
# keys drawn from 10^15: a repeat among 10^5-10^6 puts is unlikely).
fill() {
  local eps=$1 label=$2 f=$work/fill-$2.out
  log "$label: writing $fill_puts puts of $val bytes ($state_mib MiB) through $eps"
  bench "$eps" "$f" --conns 10 --clients 100 --total "$fill_puts" --key-size 16 \
    --key-space 1000000000000000 --val-size "$val" --random-values put || die "$label: filling failed"
  log "$label: filled at $(json_field "$f" rps) puts/s in $(json_field "$f" seconds) s"
  fill_rate[$label]=$(json_field "$f" rps)
}
declare -A fill_rate=()

# The markdown that goes to stdout at the end.
report=''
add() { report+="$*"$'\n'; }

machine="$(date -u +%Y-%m-%d), $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), disk $(df -h --output=source,fstype "$work" | tail -n 1 | tr -s ' '), etcd $(etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p'), ours $(git -C "$repo" rev-parse --short HEAD 2>/dev/null)$(git -C "$repo" diff --quiet HEAD 2>/dev/null || echo '+changes')"
log "work dir $work; $state_mib MiB in $fill_puts values of $val bytes; parts $parts; load average $(cut -d' ' -f1-3 /proc/loadavg)"

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR] = $1} END {if (NR) print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# --- 1. etcdctl snapshot save ---------------------------------------------------------------
if want save; then
  dir=$work/save
  start_ours s-ours "$single_ours" "s-ours=http://$single_ours:2380" "$dir"
  start_etcd s-etcd "$single_etcd" "s-etcd=http://$single_etcd:2380" "$dir"
  wait_ready s-ours
  wait_ready s-etcd
  fill "$single_ours:2379" ours-single
  fill "$single_etcd:2379" etcd-single
  declare -A save_times=() save_size=() save_rows=()
  for sys in ours etcd; do
    name=s-$sys
    if [[ $sys == ours ]]; then procs="consensus client-gateway"; else procs=etcd; fi
    pids=()
    for r in $procs; do pids+=("$(proc_pid "$name" "$r")"); done
    log "$sys: waiting for the member to be idle (pids ${pids[*]})"
    settle "${pids[@]}"
  done
  for run in $(seq 1 "$runs"); do
    if ((run % 2)); then order=(ours etcd); else order=(etcd ours); fi
    for sys in "${order[@]}"; do
      name=s-$sys host=${node_host[s-$sys]} file=$work/save/$sys.db
      if [[ $sys == ours ]]; then procs="consensus client-gateway"; else procs=etcd; fi
      pids=() before=''
      for r in $procs; do
        p=$(proc_pid "$name" "$r")
        pids+=("$p")
        before+="$r $(rss_now "$p" VmRSS) MiB (anon $(rss_now "$p" RssAnon)); "
        echo 5 >"/proc/$p/clear_refs" 2>/dev/null # resets VmHWM, when allowed
      done
      samples=$work/save/rss-$sys-$run.tsv
      : >"$samples"
      start_sampler "$samples" "${pids[@]}"
      t0=$EPOCHREALTIME
      run_fg env ETCDCTL_API=3 etcdctl --endpoints "$host:2379" --dial-timeout=2s --command-timeout=1800s \
        snapshot save "$file" >"$work/save/ctl-$sys-$run.out" 2>&1 ||
        die "$sys: snapshot save failed: $(tail -n 3 "$work/save/ctl-$sys-$run.out")"
      t1=$EPOCHREALTIME
      stop_helper "$sampler_pid"
      took=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
      size=$(stat -c %s "$file")
      peaks='' hwm=''
      set -- $procs
      for p in "${pids[@]}"; do
        peaks+="$1 $(peak "$samples" "$p" 3) MiB (anon $(peak "$samples" "$p" 4)); "
        hwm+="$1 $(rss_now "$p" VmHWM) MiB; "
        shift
      done
      log "$sys run $run: snapshot save $took s, $size bytes; RSS before: $before; peak: $peaks; VmHWM: $hwm"
      save_times[$sys]+=" $took"
      save_size[$sys]=$size
      ((run == 1)) && save_rows[$sys,before]=$before
      save_rows[$sys,peak$run]=$peaks
      if ((run == 1)); then
        if [[ $sys == ours ]]; then
          ETCDRS_BIN_DIR=$bin "$repo/scripts/snapshot.sh" status "$file" -w table >&2 || log "ours: snapshot status failed"
        else
          ETCDCTL_API=3 etcdctl snapshot status "$file" -w table >&2 || log "etcd: snapshot status failed"
        fi
      fi
      rm -f "$file"
      sleep 2
    done
  done
  db_ours=$(db_size "$single_ours") db_etcd=$(db_size "$single_etcd")
  du_ours=$(du -sb "${node_dir[s-ours]}" | cut -f1) du_etcd=$(du -sb "${node_dir[s-etcd]}" | cut -f1)
  stop_node s-ours
  stop_node s-etcd
  ((keep)) || rm -rf "$work/save"
  add "\`etcdctl snapshot save\` of one member holding $state_mib MiB ($fill_puts values of $val bytes, distinct keys, no overwrites), $runs runs each, the order alternating; the file on the same disk, page cache warm. $machine."
  add ""
  add "| system | db size (status) / data dir | save, median (runs) | MB/s | file | RSS before (anon) | peak RSS during the save (anon), per run |"
  add "|---|---:|---:|---:|---:|---|---|"
  for sys in ours etcd; do
    med=$(median <<<"${save_times[$sys]}")
    if [[ $sys == ours ]]; then dbs=$db_ours dus=$du_ours; else dbs=$db_etcd dus=$du_etcd; fi
    peaks=''
    for run in $(seq 1 "$runs"); do peaks+="${peaks:+<br>}${save_rows[$sys,peak$run]%; }"; done
    add "| $sys | $((dbs / 1000000)) MB / $((dus / 1000000)) MB | $med s ($(sed 's/^ //; s/ /, /g' <<<"${save_times[$sys]}")) | $(awk -v b="${save_size[$sys]}" -v t="$med" 'BEGIN {printf "%.0f", b / 1e6 / t}') | $((save_size[$sys] / 1000000)) MB | ${save_rows[$sys,before]%; } | $peaks |"
  done
  add ""
fi

# --- 2. and 3. raft snapshots ------------------------------------------------------------------
# Epoch seconds of the first line of FILE (from byte OFFSET on) matching the ERE, or empty.
# Ours: RFC 3339 at the start of the line; etcd's zap: "ts":"...".
line_time() {
  local f=$1 off=$2 re=$3 line ts
  line=$(tail -c +"$((off + 1))" "$f" | grep -m 1 -E "$re") || return 0
  ts=$(grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+(Z|[+-][0-9:]+)' <<<"$line" | head -n 1)
  [[ -n $ts ]] && date -u -d "$ts" +%s.%N
}
line_of() { tail -c +"$(($2 + 1))" "$1" | grep -m 1 -E "$3"; }
count_of() { tail -c +"$(($2 + 1))" "$1" | grep -cE "$3"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "" || b == "") print "n/a"; else printf "%.2f", b - a}'; }

# window_stats FROM TO SAMPLES...: "puts rps p50 p99 max" of the answers in [FROM, TO).
window_stats() {
  local from=$1 to=$2 sorted=$work/window.sorted
  shift 2
  cat "$@" 2>/dev/null | awk -v a="$from" -v b="$to" '$1 >= a && $1 < b {print $1, $2}' >"$work/window"
  local n first last
  n=$(wc -l <"$work/window")
  if ((n == 0)); then echo "0 n/a n/a n/a n/a"; return; fi
  first=$(sort -g "$work/window" | head -n 1 | cut -d' ' -f1)
  last=$(sort -g "$work/window" | tail -n 1 | cut -d' ' -f1)
  cut -d' ' -f2 "$work/window" | sort -g >"$sorted"
  # Throughput over the window as far as the load covered it.
  awk -v n="$n" -v a="$from" -v b="$to" -v f="$first" -v l="$last" '
    {v[NR] = $1}
    END {
      s = (f > a) ? f : a; e = (l < b) ? l : b; d = e - s
      r50 = int(0.5 * n); if (r50 < 0.5 * n) r50++; if (r50 < 1) r50 = 1
      r99 = int(0.99 * n); if (r99 < 0.99 * n) r99++; if (r99 < 1) r99 = 1
      printf "%d %s %.2f %.2f %.2f\n", n, (d > 0) ? sprintf("%.0f", n / d) : "n/a", v[r50], v[r99], v[n]
    }' "$sorted"
}

# The load through the leader: runs of --load-total puts one after the other until the file
# STOP exists; each run's answers in SAMPLES_PREFIX-N.
# (In a background subshell: a TERM stops its etcd-bench too.)
load_loop() {
  local eps=$1 stop=$2 prefix=$3 i=0 bp=''
  trap '[[ -n $bp ]] && kill -TERM "$bp" 2>/dev/null; exit 0' TERM
  while [[ ! -e $stop ]]; do
    i=$((i + 1))
    "$bin/etcd-bench" --endpoints "$eps" --conns 10 --clients 100 --total "$load_total" \
      --key-size 8 --key-space 100000 --val-size 256 --samples "$prefix-$i.samples" put >"$prefix-$i.out" 2>&1 &
    bp=$!
    wait "$bp"
    bp=''
  done
}
# One run of the same load, in the foreground: SAMPLES_FILE.
load_once() {
  bench "$1" "$2.out" --conns 10 --clients 100 --total "$load_total" --key-size 8 \
    --key-space 100000 --val-size 256 --samples "$2" put || die "the put load failed"
}

declare -A row=()
# transfer SYSTEM MODE NAMES...: the raft-snapshot experiment on a running, filled cluster;
# MODE quiet or load. Fills row[SYSTEM,MODE,...].
transfer() {
  local sys=$1 mode=$2 names=("${@:3}") name leader='' follower='' other=''
  for name in "${names[@]}"; do
    if [[ $(is_leader "${node_host[$name]}") == true ]]; then leader=$name; fi
  done
  [[ -n $leader ]] || die "$sys: no leader found"
  for name in "${names[@]}"; do
    [[ $name == "$leader" ]] && continue
    if [[ -z $follower ]]; then follower=$name; else other=$name; fi
  done
  local lh=${node_host[$leader]} fh=${node_host[$follower]} d=$work/$sys-$mode
  mkdir -p "$d"
  log "$sys $mode: leader $leader ($lh), the follower to stop $follower ($fh)"
  local leader_pids=() lp
  if [[ $sys == ours ]]; then
    leader_pids=("$(proc_pid "$leader" consensus)" "$(proc_pid "$leader" peer-gateway)")
  else
    leader_pids=("${node_pid[$leader]}")
  fi
  if [[ $mode == load ]]; then
    log "$sys $mode: baseline load through the leader, all members up"
    load_once "$lh:2379" "$d/baseline"
    row[$sys,$mode,baseline]=$(window_stats 0 9999999999 "$d/baseline")
  fi
  local behind_n=$behind
  [[ $sys == etcd ]] && behind_n=$etcd_behind
  local fpids_old=()
  [[ $sys == ours ]] && fpids_old=($(awk '{print $2}' "${node_dir[$follower]}/member.pids"))
  stop_node "$follower"
  log "$sys $mode: $follower stopped; $behind_n puts through the leader"
  bench "$lh:2379" "$d/behind.out" --conns 10 --clients 100 --total "$behind_n" --key-size 8 \
    --key-space 100000 --val-size 256 put || die "$sys: the puts while the follower is down failed"
  sleep 1
  local loff foff
  loff=$(stat -c %s "${node_log[$leader]}") foff=$(stat -c %s "${node_log[$follower]}")
  local samples=$d/rss.tsv
  : >"$samples"
  start_sampler "$samples" "${leader_pids[@]}"
  local leader_sampler=$sampler_pid
  local lpid=''
  if [[ $mode == load ]]; then
    load_loop "$lh:2379" "$d/stop-during" "$d/during" & helpers+=($!)
    lpid=$!
    sleep 0.5
  fi
  local t_start=$EPOCHREALTIME
  restart_node "$follower"
  # The follower's processes, once start-node.sh has written them (ours), and the stream's file.
  local fpids=() poller=''
  if [[ $sys == ours ]]; then
    for _ in $(seq 1 200); do
      [[ $(awk '$1 == "start-node" {print $2}' "${node_dir[$follower]}/member.pids" 2>/dev/null) == "${node_pid[$follower]}" ]] &&
        [[ -n $(proc_pid "$follower" peer-gateway) ]] && break
      sleep 0.05
    done
    fpids=("$(proc_pid "$follower" consensus)" "$(proc_pid "$follower" peer-gateway)")
    # The incoming image's size every 50 ms: the stream's progress.
    (while :; do
      find "${node_dir[$follower]}/snap" -maxdepth 1 -name 'incoming-*' -printf "$EPOCHREALTIME %s\n" 2>/dev/null
      sleep 0.05
    done >"$d/incoming.tsv") & helpers+=($!)
    poller=$!
  else
    fpids=("${node_pid[$follower]}")
  fi
  start_sampler "$samples" "${fpids[@]}"
  local follower_sampler=$sampler_pid
  local done_re received_re recv_re send_re
  if [[ $sys == ours ]]; then
    recv_re='receiving a raft snapshot' done_re='installed a raft snapshot' send_re='the peer gateway is sending a raft snapshot'
  else
    recv_re='"receiving database snapshot"' done_re='"applied snapshot"' send_re='"sending database snapshot"'
  fi
  local t_installed='' now
  while :; do
    if (($(count_of "${node_log[$follower]}" "$foff" "$done_re") > 0)); then t_installed=$EPOCHREALTIME; break; fi
    now=$(secs "$t_start" "$EPOCHREALTIME")
    if [[ ${now%.*} -ge 120 ]] && (($(count_of "${node_log[$follower]}" "$foff" "$recv_re") == 0)); then
      die "$sys: no snapshot reached $follower within 120 s (caught up from the log?): $(tail -n 5 "${node_log[$follower]}")"
    fi
    [[ ${now%.*} -ge 1800 ]] && break
    kill -0 "${node_pid[$follower]}" 2>/dev/null || { tail -n 20 "${node_log[$follower]}" >&2; die "$sys: $follower exited"; }
    sleep 0.05
  done
  [[ -n $t_installed ]] || die "$sys: $follower installed no snapshot within 30 minutes: $(tail -n 5 "${node_log[$follower]}")"
  local t_reached=''
  if [[ -n $lpid ]]; then
    # The load goes on until the follower has what the leader had when the install was seen
    # (through a second snapshot, if the first one was not enough).
    local target frev2
    target=$(revision "$lh")
    for _ in $(seq 1 6000); do
      frev2=$(revision "$fh")
      if [[ -n $frev2 && -n $target ]] && ((frev2 >= target)); then t_reached=$EPOCHREALTIME; break; fi
      sleep 0.2
    done
    [[ -n $t_reached ]] || log "$sys $mode: warning: $follower never reached revision $target under load"
    : >"$d/stop-during"
    wait "$lpid" 2>/dev/null
    stop_helper "$lpid"
  fi
  local t_load_end=$EPOCHREALTIME
  [[ $mode == load ]] && log "$sys $mode: the follower reached the leader's revision at the install $(secs "$t_installed" "$t_reached") s after it; the load stopped $(secs "$t_installed" "$t_load_end") s after the install"
  # Caught up: the follower's revision equal to the leader's (which no longer moves).
  local lrev frev t_caught='' seen=''
  lrev=$(revision "$lh")
  for _ in $(seq 1 6000); do
    frev=$(revision "$fh")
    if [[ $frev != "$seen" ]]; then
      echo "$EPOCHREALTIME ${frev:-none} $lrev" >>"$d/catchup.tsv"
      seen=$frev
    fi
    if [[ -n $frev && -n $lrev ]] && ((frev >= lrev)); then t_caught=$EPOCHREALTIME; break; fi
    sleep 0.1
  done
  log "$sys $mode: the follower's revision (time, follower, leader): $(awk -v s="$t_installed" '{printf "%+.2fs %s/%s; ", $1 - s, $2, $3}' "$d/catchup.tsv")"
  [[ -n $t_caught ]] || log "$sys $mode: warning: $follower never reached revision $lrev (at ${frev:-?})"
  sleep 1
  stop_helper "$leader_sampler"
  stop_helper "$follower_sampler"
  [[ -n $poller ]] && stop_helper "$poller"
  # What the logs say.
  local t_recv t_sent t_committed t_saved t_stream_end bytes
  t_recv=$(line_time "${node_log[$follower]}" "$foff" "$recv_re")
  t_sent=$(line_time "${node_log[$leader]}" "$loff" "$send_re")
  if [[ $sys == ours ]]; then
    bytes=$(line_of "${node_log[$leader]}" "$loff" "$send_re" | grep -oE 'bytes=[0-9]+' | cut -d= -f2)
    t_committed=$(line_time "${node_log[$follower]}" "$foff" 'raft snapshot install committed')
    t_stream_end=$(awk -v b="$bytes" '$2 == b {print $1; exit}' "$d/incoming.tsv")
    t_installed=$(line_time "${node_log[$follower]}" "$foff" "$done_re")
    local prep
    prep=$(line_of "${node_log[$leader]}" "$loff" 'prepared a raft snapshot' | grep -oE 'took_ms=[0-9]+' | cut -d= -f2)
    log "$sys $mode: leader prepared the checkpoint in ${prep:-?} ms; $(count_of "${node_log[$leader]}" "$loff" "$send_re") image read(s) started"
  else
    bytes=$(line_of "${node_log[$leader]}" "$loff" "$send_re" | jq -r '.bytes // empty' 2>/dev/null)
    t_saved=$(line_time "${node_log[$follower]}" "$foff" '"received and saved database snapshot"')
    t_stream_end=$t_saved
    t_committed=''
    t_installed=$(line_time "${node_log[$follower]}" "$foff" "$done_re")
  fi
  grep -hE 'snapshot' <(tail -c +"$((loff + 1))" "${node_log[$leader]}") | head -n 10 | sed "s/^/  $leader: /" >&2
  grep -hE 'snapshot' <(tail -c +"$((foff + 1))" "${node_log[$follower]}") | head -n 12 | sed "s/^/  $follower: /" >&2
  local n_snap t_last_installed
  n_snap=$(count_of "${node_log[$follower]}" "$foff" "$recv_re")
  t_last_installed=$(tail -c +"$((foff + 1))" "${node_log[$follower]}" | grep -E "$done_re" | tail -n 1 |
    grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+(Z|[+-][0-9:]+)' | head -n 1)
  [[ -n $t_last_installed ]] && t_last_installed=$(date -u -d "$t_last_installed" +%s.%N)
  ((n_snap > 1)) && log "$sys $mode: warning: $n_snap snapshots went to $follower before it caught up (the last installed $(secs "$t_installed" "$t_last_installed") s after the first)"
  # Each process's largest RSS per 2 s, MiB: where memory moves.
  awk -v s="$t_start" '{b = int(($1 - s) / 2) * 2; k = $2; if ($3 > m[b, k]) m[b, k] = $3; bs[b] = 1; ks[k] = 1}
    END {for (b in bs) {line = sprintf("%4d", b); for (k in ks) line = line sprintf(" %s:%d", k, m[b, k] / 1024); print line}}' "$samples" |
    sort -n | sed "s/^/  RSS +/; s/\$/ (leader ${leader_pids[*]}, follower ${fpids[*]})/" >&2
  local lpeak='' fpeak='' p r
  r=(consensus peer-gateway)
  [[ $sys == etcd ]] && r=(etcd)
  local i=0
  for p in "${leader_pids[@]}"; do lpeak+="${r[i]} $(peak "$samples" "$p" 3) (anon $(peak "$samples" "$p" 4)); "; i=$((i + 1)); done
  i=0
  for p in "${fpids[@]}"; do fpeak+="${r[i]} $(peak "$samples" "$p" 3) (anon $(peak "$samples" "$p" 4)); "; i=$((i + 1)); done
  row[$sys,$mode,bytes]=${bytes:-?}
  row[$sys,$mode,to_recv]=$(secs "$t_start" "$t_recv")
  row[$sys,$mode,stream]=$(secs "$t_recv" "$t_stream_end")
  row[$sys,$mode,unpack]=$(secs "$t_stream_end" "${t_committed:-$t_installed}")
  row[$sys,$mode,swap]=$([[ -n $t_committed ]] && secs "$t_committed" "$t_installed" || echo "-")
  row[$sys,$mode,xfer]=$(secs "$t_recv" "$t_installed")
  row[$sys,$mode,mbps]=$(awk -v b="${bytes:-0}" -v t="${row[$sys,$mode,xfer]}" 'BEGIN {printf (t > 0 && b > 0) ? sprintf("%.0f", b / 1e6 / t) : "n/a"}')
  row[$sys,$mode,stream_mbps]=$(awk -v b="${bytes:-0}" -v t="${row[$sys,$mode,stream]}" 'BEGIN {printf (t > 0 && b > 0) ? sprintf("%.0f", b / 1e6 / t) : "n/a"}')
  row[$sys,$mode,caught]=$(secs "$t_installed" "$t_caught")
  row[$sys,$mode,total]=$(secs "$t_start" "$t_caught")
  row[$sys,$mode,snaps]=$n_snap
  row[$sys,$mode,reached]=$(secs "$t_installed" "$t_reached")
  row[$sys,$mode,lpeak]=${lpeak%; }
  row[$sys,$mode,fpeak]=${fpeak%; }
  log "$sys $mode: image ${bytes:-?} bytes; start -> receiving ${row[$sys,$mode,to_recv]} s, stream ${row[$sys,$mode,stream]} s (${row[$sys,$mode,stream_mbps]} MB/s), then -> committed/applied ${row[$sys,$mode,unpack]} s, swap ${row[$sys,$mode,swap]} s; receiving -> installed ${row[$sys,$mode,xfer]} s (${row[$sys,$mode,mbps]} MB/s); installed -> caught up ${row[$sys,$mode,caught]} s; start -> caught up ${row[$sys,$mode,total]} s; peak RSS leader: $lpeak follower: $fpeak"
  if [[ $mode == load ]]; then
    local all=("$d"/during-*.samples)
    row[$sys,$mode,w_start]=$(window_stats "$t_start" "$t_recv" "${all[@]}")
    row[$sys,$mode,w_stream]=$(window_stats "$t_recv" "$t_stream_end" "${all[@]}")
    row[$sys,$mode,w_unpack]=$(window_stats "$t_stream_end" "$t_installed" "${all[@]}")
    row[$sys,$mode,w_xfer]=$(window_stats "$t_recv" "$t_installed" "${all[@]}")
    row[$sys,$mode,w_catch]=$(window_stats "$t_installed" "$t_load_end" "${all[@]}")
    grep -h '  error' "$d"/during-*.out "$d"/baseline-*.out 2>/dev/null | sort | uniq -c | head -n 5 >&2
    # Per second during the whole run: where the p99 moves.
    cat "${all[@]}" | awk -v s="$t_start" '{b = int($1 - s); n[b]++; if ($2 > m[b]) m[b] = $2} END {for (k in n) printf "%d %d %.1f\n", k, n[k], m[k]}' |
      sort -n | awk '{printf "  +%ds: %d puts, max %.1f ms\n", $1, $2, $3}' >&2
    log "$sys $mode: after: the same load again, caught up"
    load_once "$lh:2379" "$d/after"
    row[$sys,$mode,after]=$(window_stats 0 9999999999 "$d/after")
  fi
}

# raft_part SYSTEM: a filled 3-member cluster, then the quiet transfer and the loaded one.
raft_part() {
  local sys=$1
  local dir=$work/raft-$sys names=() cluster='' i
  for i in 0 1 2; do
    names+=("r$sys$i")
    cluster+="${cluster:+,}r$sys$i=http://${cluster_hosts[i]}:2380"
  done
  mkdir -p "$dir"
  echo "$cluster" >"$dir/cluster"
  for i in 0 1 2; do
    if [[ $sys == ours ]]; then
      start_ours "${names[i]}" "${cluster_hosts[i]}" "$cluster" "$dir" \
        "$(printf 'ETCD_SNAPSHOT_COUNT="1000"\nETCD_SNAPSHOT_CATCHUP_ENTRIES="100"')"
    else
      start_etcd "${names[i]}" "${cluster_hosts[i]}" "$cluster" "$dir" --snapshot-count 1000
    fi
  done
  wait_ready "${names[@]}"
  local eps
  eps=$(printf '%s:2379,' "${cluster_hosts[@]}")
  fill "${eps%,}" "$sys-cluster"
  local pids=()
  for i in 0 1 2; do
    if [[ $sys == ours ]]; then pids+=("$(proc_pid "${names[i]}" consensus)"); else pids+=("${node_pid[${names[i]}]}"); fi
  done
  settle "${pids[@]}"
  row[$sys,db]=$(db_size "${cluster_hosts[0]}")
  transfer "$sys" quiet "${names[@]}"
  # A leader keeps its log 10 s after an image was read (ours), or until the send's goroutine is
  # done (etcd: `sent merged snapshot`, up to 30 s after the image left): let that pass.
  if [[ $sys == etcd ]]; then
    for _ in $(seq 1 600); do
      grep -q '"sent merged snapshot"' "$dir"/*.log && break
      sleep 0.1
    done
    sleep 2
  else
    sleep 12
  fi
  transfer "$sys" load "${names[@]}"
  for i in 0 1 2; do stop_node "${names[i]}"; done
  ((keep)) || rm -rf "$dir"
}

want raft && raft_part ours
want etcd-raft && raft_part etcd

if want raft || want etcd-raft; then
  add "Raft snapshot to a follower behind the compacted log: 3 members on 127.0.0.143-145 holding $state_mib MiB ($fill_puts values of $val bytes), --snapshot-count 1000 (ours also --snapshot-catchup-entries 100; etcd 3.4's is fixed at 5000); a follower stopped, $behind small puts through the leader ($etcd_behind for etcd, past its 5000 catch-up entries), the follower started again. Quiet: nothing else runs; load: puts through the leader (10 conns / 100 clients, 256-byte values) from the follower's start until it has the revision the leader had when the follower installed (the first) snapshot. Snapshots sent: how many the follower received before it caught up; the stream and install columns are the first one's, \"caught up\" the follower's revision equal to the leader's (after the load, in the load runs). Times from the members' logs, RSS sampled every 50 ms. $machine."
  add ""
  add "| system, run | image | snapshots sent | start → stream starts | stream | → installed | receiving → installed | MB/s (stream / whole) | installed → caught up | start → caught up | peak RSS leader, MiB (anon) | peak RSS follower, MiB (anon) |"
  add "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
  for sys in ours etcd; do
    for mode in quiet load; do
      [[ -n ${row[$sys,$mode,bytes]:-} ]] || continue
      unpack=${row[$sys,$mode,unpack]}
      [[ ${row[$sys,$mode,swap]} != - ]] && unpack="$unpack + ${row[$sys,$mode,swap]}"
      add "| $sys, $mode | $(awk -v b="${row[$sys,$mode,bytes]}" 'BEGIN {printf (b + 0 > 0) ? sprintf("%.0f MB", b / 1e6) : "?"}') | ${row[$sys,$mode,snaps]} | ${row[$sys,$mode,to_recv]} s | ${row[$sys,$mode,stream]} s | $unpack s | ${row[$sys,$mode,xfer]} s | ${row[$sys,$mode,stream_mbps]} / ${row[$sys,$mode,mbps]} | ${row[$sys,$mode,caught]} s | ${row[$sys,$mode,total]} s | ${row[$sys,$mode,lpeak]} | ${row[$sys,$mode,fpeak]} |"
    done
  done
  add ""
  add "Puts through the leader (10 conns / 100 clients, 256-byte values), by window:"
  add ""
  add "| system | window | puts | req/s | p50 ms | p99 ms | max ms |"
  add "|---|---|---:|---:|---:|---:|---:|"
  for sys in ours etcd; do
    [[ -n ${row[$sys,load,baseline]:-} ]] || continue
    for w in "baseline:before, all members up" "w_start:follower starting, until the stream starts" \
      "w_stream:the image streaming" "w_unpack:stream done until installed (ours: unpack and swap; etcd: open and apply)" \
      "w_xfer:receiving until installed, all of it" \
      "w_catch:installed until the follower has the leader's revision at the install" "after:after, caught up"; do
      read -r n rps p50 p99 max <<<"${row[$sys,load,${w%%:*}]}"
      add "| $sys | ${w#*:} | $n | $rps | $p50 | $p99 | $max |"
    done
  done
fi

echo
printf '%s' "$report"
if [[ -n $out ]]; then
  printf '%s' "$report" >"$out"
  log "tables written to $out"
fi
log "load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
