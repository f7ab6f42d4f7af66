#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then profiles the bundled workload, has BOLT
# apply the profile and compares the two binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m ebpf_bolt.demo "$@"
