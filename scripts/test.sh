#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite on the real
# kernel and the real BOLT tools. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Only tests that need branch-sampling hardware may be skipped.
export EBPF_BOLT_STRICT_SKIPS=1
exec .venv/bin/python -m pytest -p no:cacheprovider "$@" tests
