#!/usr/bin/env bash
# Fails when a tracked C++/CUDA file differs from .clang-format (run by scripts/test.sh, so CI checks it).
#   scripts/check-format.sh          # check
#   scripts/check-format.sh --fix    # reformat in place
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.cpp' '*.h' '*.cu' '*.cuh' 2>/dev/null || find src include tests kernels bench -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
if [ "${1:-}" = "--fix" ]; then
    clang-format -i "${files[@]}"
    exit 0
fi
if ! clang-format --dry-run -Werror "${files[@]}" 2>/tmp/medllm-format.$$; then
    grep -E '^[^ ].*: (error|warning):' /tmp/medllm-format.$$ | cut -d: -f1 | sort -u | sed 's/^/[format] differs from .clang-format: /'
    rm -f /tmp/medllm-format.$$
    echo "[format] run scripts/check-format.sh --fix ($(clang-format --version))"
    exit 1
fi
rm -f /tmp/medllm-format.$$
echo "[format] ${#files[@]} files match .clang-format"
