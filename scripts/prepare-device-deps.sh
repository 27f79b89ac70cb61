#!/usr/bin/env bash
# Prepares .deps/ (ignored by git, about 30 MB) for a GPU machine that has torch, nvcc, CMake and ninja but no
# package manager and no network. Run it here, then send the tree with .deps carried and run
# scripts/device-build.sh (and scripts/bench-nf4.sh) there. .deps holds:
#   root/     the Debian packages medllm builds against (headers, libraries, CMake/pkg-config files)
#   shared/   a copy of ../shared/{igakuqa_data,qwen_tokenizer,reference} for the tests (nothing beside the
#             checkout travels); it stays in this ignored folder and is never committed
#   python/   bitsandbytes (scripts/requirements-fixtures.txt's version) for the benchmark's reference column,
#             trimmed to its CUDA 13 and CPU libraries
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(nlohmann-json3-dev libcli11-dev libspdlog-dev libspdlog1.10 libfmt-dev libfmt9
      libyaml-cpp-dev libyaml-cpp0.7 libutf8proc-dev libutf8proc2 libsentencepiece-dev libsentencepiece0
      libprotobuf-lite32 libgtest-dev libgloo-dev)  # libgloo-dev: headers only (c10d ProcessGroupGloo)
rm -rf .deps && mkdir -p .deps/debs .deps/root .deps/shared .deps/python
(cd .deps/debs && apt-get download "${pkgs[@]}" >/dev/null)
for deb in .deps/debs/*.deb; do dpkg -x "$deb" .deps/root; done
rm -rf .deps/debs .deps/root/usr/share/doc .deps/root/usr/share/man

shared=${MEDLLM_SHARED_DIR:-../shared}
for d in igakuqa_data qwen_tokenizer reference; do
  [ -d "$shared/$d" ] && cp -r "$shared/$d" .deps/shared/
done

python=${PYTHON:-python3}
[ -x .venv/bin/python ] && python=${PYTHON:-.venv/bin/python}
bnb=$(grep -E '^bitsandbytes==' scripts/requirements-fixtures.txt)
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .deps/wheel "$bnb"
"$python" - .deps/wheel .deps/python <<'PY'
import pathlib, re, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("bitsandbytes-*.whl"))
keep = re.compile(r"libbitsandbytes_(cuda13\d|cpu)\.so$")
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.endswith(".so") and not keep.search(name):
            continue
        z.extract(name, sys.argv[2])
PY
rm -rf .deps/wheel
echo "[deps] $(du -sh .deps | cut -f1) in .deps (carry '.deps' to the device)"
