#!/usr/bin/env bash
# Installs what ebpf-bolt needs on Debian/Ubuntu and builds it into .venv.
# Idempotent: a second run only re-installs the package.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (it installs Debian packages): sudo $0" >&2
  exit 1
fi

# Build: clang (BPF target), llvm-strip, libbpf headers. Run: libbpf1.
# Demo and tests: a C compiler, BOLT 22 and 19, perf, bpftool, valgrind,
# qemu-user (software-recorded branch traces), util-linux (setpriv), lld.
PKGS="clang llvm libbpf-dev libbpf1 make gcc libc6-dev bolt-22 bolt-19 \
linux-perf bpftool valgrind qemu-user util-linux python3-venv lld"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp)
  if ! { apt-get update -q && apt-get install -y -q $missing; } >"$log" 2>&1; then
    tail -20 "$log" >&2
    echo "setup: installing Debian packages failed (log above)" >&2
    exit 1
  fi
  rm -f "$log"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# a regular (not editable) install: tests run what users get; with the
# duckdb extra, which tests/test_merge.py checks against the built-in merge
.venv/bin/python -m pip install -q '.[test,duckdb]'
echo "setup: ebpf-bolt installed in $(pwd)/.venv ($(.venv/bin/ebpf-bolt -V))" >&2
