#!/usr/bin/env bash
# Builds the project and every test suite with clang in Debug with AddressSanitizer + UndefinedBehaviorSanitizer
# (-DMEDLLM_SANITIZE=ON, CUDA off) and runs the CTest suites (label cpu) under them. Tests that spawn the medllm
# binary run the instrumented binary. Every sanitizer report is fatal and is also written to
# <build>/sanitizer-logs/, so a report fails the script even inside a child process whose exit status a test
# tolerates. Extra arguments go to ctest (e.g. -R io).
#   scripts/sanitize.sh [CTEST_ARGS...]
#   MEDLLM_BUILD_DIR=dir MEDLLM_JOBS=n scripts/sanitize.sh       (default build-asan/, nproc jobs)
# LibTorch (PyPI wheel) and the Debian libraries are not instrumented; scripts/sanitize/*.supp suppresses only
# reports proven to come from them, one comment per entry.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${MEDLLM_BUILD_DIR:-build-asan}
jobs=${MEDLLM_JOBS:-$(nproc)}
log() { echo "[sanitize] $*"; }

start=$(date +%s)
if [ ! -f "$build/build.ninja" ]; then
    torch_prefix=$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')
    log "configuring $build (clang, Debug, ASan + UBSan)"
    # clang uses libstdc++ (Debian's default), the C++ library LibTorch was built against.
    CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMEDLLM_SANITIZE=ON \
        -DMEDLLM_CUDA=OFF -DCMAKE_PREFIX_PATH="$torch_prefix" >/dev/null
fi
if ! grep -q '^MEDLLM_SANITIZE:BOOL=ON' "$build/CMakeCache.txt"; then
    echo "error: $build is not a sanitizer build (MEDLLM_SANITIZE is not ON); use another MEDLLM_BUILD_DIR" >&2
    exit 2
fi
log "building with $jobs jobs"
cmake --build "$build" -j "$jobs"
built=$(date +%s)
log "build finished in $((built - start)) s"

logs="$root/$build/sanitizer-logs"
rm -rf "$logs"
mkdir -p "$logs"
supp="$root/scripts/sanitize"
# halt_on_error: the first report ends the process (UBSan is also compiled with -fno-sanitize-recover).
# exitcode 86 keeps a sanitizer failure apart from medllm's own exit codes 1 and 2.
# allocator_may_return_null: malloc/posix_memalign of an absurd size returns null as glibc's does (LibTorch then
# throws its own error) instead of ASan aborting, so the tests of the allocation-failure paths test those paths.
common="halt_on_error=1:exitcode=86:log_path=$logs/report:log_exe_name=1:print_summary=1"
export ASAN_OPTIONS="$common:detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:allocator_may_return_null=1:suppressions=$supp/asan.supp"
export UBSAN_OPTIONS="$common:print_stacktrace=1:suppressions=$supp/ubsan.supp"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"

log "running ctest -L cpu under ASan + UBSan (reports: $logs)"
status=0
(cd "$build" && ctest -L cpu --output-on-failure "$@") || status=$?
finished=$(date +%s)

reports=$(find "$logs" -type f | sort)
if [ -n "$reports" ]; then
    log "sanitizer reports:"
    for f in $reports; do
        echo "==== $f"
        cat "$f"
    done
    status=1
fi
log "tests finished in $((finished - built)) s (build $((built - start)) s)"
if [ "$status" -ne 0 ]; then
    log "FAILED"
    exit 1
fi
log "clean: no sanitizer report, every cpu suite passed"
