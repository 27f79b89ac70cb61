#!/usr/bin/env bash
# The test command: sets up if needed, builds, and runs the CTest suites
# (label cpu; label gpu too when a CUDA device is visible). Extra args go to ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${MEDLLM_BUILD_DIR:-build}
scripts/setup.sh
scripts/check-format.sh
labels="cpu"
if "$build_dir/medllm" version 2>/dev/null | grep -q '^CUDA available: yes'; then
    labels="cpu|gpu"
fi
echo "[test] running ctest -L '$labels'"
cd "$build_dir"
ctest -L "$labels" --output-on-failure "$@"
