#!/usr/bin/env bash
# Installs what is missing, then builds and runs every test (CPU only; GPU tests skip
# themselves, saying so). Prints "tests: N passed, N failed, N skipped" at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install_deps.sh
status=0
bazel test //... "$@" || status=$?
python3 scripts/test_summary.py bazel-testlogs || true
exit "$status"
