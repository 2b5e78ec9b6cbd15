#!/usr/bin/env bash
# Installs what building and testing a member needs on Debian/Ubuntu, when it is missing:
# capnp (schema compiler), protoc (etcd's API), clang/libclang (RocksDB bindings), Debian's
# RocksDB 7.8 (linked, not compiled), and etcd 3.4 (etcdctl for tests, etcd for comparisons);
# fuse3 (fusermount3) and e2fsprogs (mkfs.ext4) for the system tests' power-loss and disk-full
# faults.
set -euo pipefail
packages=(capnproto protobuf-compiler libprotobuf-dev libclang-dev clang librocksdb-dev etcd-server etcd-client fuse3 e2fsprogs)
missing=()
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian may start etcd-server as a service on 127.0.0.1:2379, the port our member takes.
if systemctl is-active --quiet etcd 2>/dev/null; then
  echo "setup: stopping the etcd service that etcd-server started (it holds 127.0.0.1:2379)" >&2
  ${sudo:-} systemctl stop etcd || true
elif command -v service >/dev/null && service etcd status >/dev/null 2>&1; then
  echo "setup: stopping the etcd service that etcd-server started (it holds 127.0.0.1:2379)" >&2
  ${sudo:-} service etcd stop || true
fi
command -v cargo >/dev/null || { echo "setup: cargo is missing: install Rust with rustup" >&2; exit 1; }
