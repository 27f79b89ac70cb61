#!/usr/bin/env bash
# Builds and tests medllm on a GPU machine without a package manager (see scripts/prepare-device-deps.sh):
# LibTorch comes from that machine's python3 torch, the Debian libraries from the carried .deps/.
#   scripts/device-build.sh            # configure, build, run ctest (cpu and gpu labels), medllm version
# From this workplace, one device call does the build, the tests and the NF4 benchmark:
#   run(command="scripts/device-build.sh && scripts/bench-nf4.sh cuda", carry=[".deps"])
#   MEDLLM_JOBS=16 MEDLLM_CTEST_ARGS="-R quant" scripts/device-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .deps/root/usr ] || { echo "error: .deps/root missing: run scripts/prepare-device-deps.sh first and carry .deps" >&2; exit 2; }
deps=$(pwd)/.deps/root/usr
libdir=$deps/lib/x86_64-linux-gnu
export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PKG_CONFIG_PATH=$libdir/pkgconfig:$deps/share/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=$(pwd)/.deps/root
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
build_dir=${MEDLLM_BUILD_DIR:-build-device}
# The shared data: ../shared beside the checkout when it is there, else the copy carried in .deps/shared.
shared_dir=${MEDLLM_SHARED_DIR:-$(pwd)/../shared}
[ -d "$shared_dir/qwen_tokenizer" ] || shared_dir=$(pwd)/.deps/shared
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$torch_prefix;$deps" -DMEDLLM_EXTRA_PREFIX="$deps" \
    -DMEDLLM_SHARED_DIR="$shared_dir" >/dev/null
cmake --build "$build_dir" -j "${MEDLLM_JOBS:-$(nproc)}"
"$build_dir/medllm" version
(cd "$build_dir" && ctest -L 'cpu|gpu' --output-on-failure ${MEDLLM_CTEST_ARGS:-})
