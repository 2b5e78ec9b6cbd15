#!/usr/bin/env bash
# Snapshots of a member's state, as etcdutl handles etcd's:
#
#   etcdctl --endpoints=HOST:2379 snapshot save FILE     (any member, ours or a real etcd's)
#   scripts/snapshot.sh status FILE [-w simple|table|json]
#   scripts/snapshot.sh restore FILE --name NAME --initial-cluster NAME=URL,... \
#       [--initial-cluster-token TOKEN] [--initial-advertise-peer-urls URL] [--data-dir DIR] \
#       [--bump-revision N --mark-compacted]
#
# FILE is a snapshot of one of our members, or of a real etcd 3.4 or 3.5 (a bbolt database and
# its SHA-256, as etcdctl saves it): the kind is told from its first bytes. Both are checked
# against their SHA-256 first; a damaged or truncated file is refused with one line naming it.
#
# `status` prints the hash, revision, rows and size, as `etcdutl snapshot status` does: of ours,
# the member's HashKV at the snapshot's revision and every stored version and tombstone; of an
# etcd file, etcd's own figures (what `etcdctl snapshot status` prints of it).
#
# `restore` makes the data dir (default NAME.etcd) of one member of a new cluster from the file,
# as `etcdutl snapshot restore` does: run it once per member with the same file and
# --initial-cluster, then start each member on its data dir. The new cluster holds every key
# with all the history the snapshot kept (every version since its compaction, tombstones
# included) and its compaction revision; its members are --initial-cluster's (new IDs; the old
# member list is not carried over). From an etcd snapshot, leases and auth users and roles are
# not restored (a warning says so; keys keep their lease IDs but do not expire). With etcd 3.6's
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
