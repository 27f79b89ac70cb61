#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/*_fuzz.cpp) with clang + ASan/UBSan in build-fuzz/ and runs each for a
# bounded time. A crash, sanitizer report or violated invariant fails the script and leaves the reproducer in
# build-fuzz/fuzz-artifacts/.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, every target)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
build=build-fuzz
jobs=${MEDLLM_JOBS:-2}

if [ ! -f "$build/build.ninja" ]; then
    torch_prefix=$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')
    CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DMEDLLM_FUZZ=ON -DMEDLLM_TESTS=OFF -DMEDLLM_CUDA=OFF -DCMAKE_PREFIX_PATH="$torch_prefix" >/dev/null
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for src in tests/fuzz/*_fuzz.cpp; do
        name=$(basename "$src" .cpp)
        targets+=("fuzz_${name%_fuzz}")
    done
fi

mkdir -p "$build/fuzz-artifacts"
status=0
for target in "${targets[@]}"; do
    echo "[fuzz] building $target"
    cmake --build "$build" --target "$target" -j "$jobs"
    corpus="$build/fuzz-corpus/$target"
    mkdir -p "$corpus"
    # Seed the tokenizer corpus with the golden texts (one file per case).
    if [ "$target" = fuzz_tokenizer ] && [ -z "$(ls -A "$corpus")" ] && [ -f tests/fixtures/text/qwen2_golden.jsonl ]; then
        python3 - "$corpus" <<'PY'
import json, sys
for i, line in enumerate(open("tests/fixtures/text/qwen2_golden.jsonl", encoding="utf-8")):
    open(f"{sys.argv[1]}/seed{i:04d}", "w", encoding="utf-8").write(json.loads(line)["text"])
PY
    fi
    echo "[fuzz] running $target for ${seconds}s"
    if ! ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        "$build/tests/fuzz/$target" -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=4096 -timeout=10 \
        -artifact_prefix="$build/fuzz-artifacts/$target-" "$corpus"; then
        echo "[fuzz] $target FAILED (reproducer in $build/fuzz-artifacts/)" >&2
        status=1
    fi
done
exit $status
