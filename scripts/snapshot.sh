#!/usr/bin/env bash
# Snapshots of a member's state, as etcdutl handles etcd's:
#
#   etcdctl --endpoints=HOST:2379 snapshot save FILE     (any member; etcdctl as for etcd)
#   scripts/snapshot.sh status FILE [-w simple|table|json]
#   scripts/snapshot.sh restore FILE --name NAME --initial-cluster NAME=URL,... \
#       [--initial-cluster-token TOKEN] [--initial-advertise-peer-urls URL] [--data-dir DIR] \
#       [--bump-revision N --mark-compacted]
#
# `status` checks the file's SHA-256 and prints its hash (the member's HashKV at the snapshot's
# revision), revision, rows (every stored version and tombstone) and size, as `etcdutl snapshot
# status` does. `restore` makes the data dir (default NAME.etcd) of one member of a new cluster
# from the file, as `etcdutl snapshot restore` does: run it once per member with the same file
# and --initial-cluster, then start each member on its data dir. With etcd 3.6's
# `--bump-revision N --mark-compacted`, revisions continue N past the snapshot's, everything
# before is compacted, so watchers and caches of the old cluster start over.
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
