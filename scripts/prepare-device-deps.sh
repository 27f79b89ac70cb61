#!/usr/bin/env bash
# Prepares .deps/ (ignored by git) for a GPU machine that has torch, nvcc, CMake and ninja but no
# package manager and no network: downloads the Debian packages medllm builds against and unpacks
# their headers, libraries and CMake/pkg-config files under .deps/root. Run it here; then send the
# tree to the GPU machine with .deps carried and run scripts/device-build.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(nlohmann-json3-dev libcli11-dev libspdlog-dev libspdlog1.10 libfmt-dev libfmt9
      libyaml-cpp-dev libyaml-cpp0.7 libutf8proc-dev libutf8proc2 libsentencepiece-dev libsentencepiece0
      libprotobuf-lite32 libgtest-dev)
rm -rf .deps && mkdir -p .deps/debs .deps/root
(cd .deps/debs && apt-get download "${pkgs[@]}" >/dev/null)
for deb in .deps/debs/*.deb; do dpkg -x "$deb" .deps/root; done
rm -rf .deps/debs .deps/root/usr/share/doc .deps/root/usr/share/man
echo "[deps] $(du -sh .deps | cut -f1) in .deps/root (carry '.deps' to the device)"
