#!/usr/bin/env bash
# Regenerates the build-prefs TRL round-trip fixtures (tests/fixtures/train/prefs_trl_*):
# the pairs files from the crafted samples with the builder's code, then one TRL DPO step on each.
#   scripts/make-prefs-trl-fixture.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
cmake --build "$build" --target test_train
MEDLLM_UPDATE_FIXTURES=1 "$build/tests/test_train" --gtest_filter='PrefsTrl*' >/dev/null || true  # report is stale now
.venv/bin/python -c 'import trl' 2>/dev/null || .venv/bin/pip install -q -r scripts/requirements-fixtures.txt
.venv/bin/python scripts/prefs_trl_roundtrip.py
"$build/tests/test_train" --gtest_filter='PrefsTrl*'
