#!/usr/bin/env bash
# Snapshots of a member's state, as etcdutl handles etcd's:
#
#   etcdctl --endpoints=HOST:2379 snapshot save FILE     (any member; etcdctl as for etcd)
#   scripts/snapshot.sh status FILE [-w simple|table|json]
#
# `status` checks the file's SHA-256 and prints its hash (the member's HashKV at the snapshot's
# revision), revision, rows (every stored version and tombstone) and size, as `etcdutl snapshot
# status` does. Restoring (`etcdutl snapshot restore`) is not there yet.
#
# Uses $ETCDRS_BIN_DIR/consensus if set, else the release build (built if missing).
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin_dir=${ETCDRS_BIN_DIR:-}
if [[ -z $bin_dir ]]; then
  bin_dir=${CARGO_TARGET_DIR:-$repo/target}/release
  if [[ ! -x $bin_dir/consensus ]]; then
    echo "snapshot.sh: building the release binaries (first use only)" >&2
    (cd "$repo" && scripts/setup.sh && cargo build --release --bin consensus) >&2 || exit 1
  fi
fi
[[ -x $bin_dir/consensus ]] || { echo "snapshot.sh: missing $bin_dir/consensus" >&2; exit 1; }
exec "$bin_dir/consensus" snapshot "$@"
