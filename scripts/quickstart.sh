#!/usr/bin/env bash
# Sets up, builds, and shows what medllm is. Until the full pipeline exists this prints
# `medllm version` and `medllm --help`; it grows into the default end-to-end run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build/medllm version
echo
build/medllm --help
