#!/usr/bin/env bash
# Installs everything medllm needs on a fresh Debian machine, idempotently, then configures and
# builds Release into build/. Re-running it on a set-up machine takes seconds.
#   scripts/setup.sh            # install + configure + build
#   MEDLLM_BUILD_DIR=dir scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build_dir=${MEDLLM_BUILD_DIR:-build}
jobs=${MEDLLM_JOBS:-$(nproc)}

log() { echo "[setup] $*"; }

# ---- Debian packages (apt-get update only when something is missing)
debs=(build-essential cmake ninja-build pkg-config ccache python3-venv
      nlohmann-json3-dev libcli11-dev libspdlog-dev libgtest-dev libsentencepiece-dev
      libyaml-cpp-dev libutf8proc-dev libxxhash-dev clang-format
      libgloo-dev)  # libgloo-dev: headers for c10d's ProcessGroupGloo (src/train/distributed.cpp; its library is not linked)
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- LibTorch from the pinned PyPI torch wheel, in a project-local virtualenv
python=${MEDLLM_PYTHON:-python3}
stamp=.venv/.medllm-requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "creating .venv with $(grep -E '^torch' requirements.txt) (a few GB, about a minute)"
    [ -x .venv/bin/python ] || "$python" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r requirements.txt
    echo "$want" > "$stamp"
fi
torch_prefix=$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')

# ---- CUDA toolkit (optional): kernels compile wherever nvcc is
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH=/usr/local/cuda/bin:$PATH
fi

# ---- configure + build
if [ ! -f "$build_dir/build.ninja" ]; then
    log "configuring $build_dir (Release)"
    cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_PREFIX_PATH="$torch_prefix" ${MEDLLM_CMAKE_ARGS:-} >/dev/null
fi
log "building with $jobs jobs"
start=$(date +%s)
cmake --build "$build_dir" -j "$jobs"
log "build finished in $(( $(date +%s) - start )) s: $root/$build_dir/medllm"
