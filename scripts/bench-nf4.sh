#!/usr/bin/env bash
# NF4 / QLoRA benchmark, medllm against bitsandbytes + PEFT on the same Qwen2.5-7B-shaped projections, one command:
#   scripts/bench-nf4.sh              # on the GPU when one is visible, else on the CPU
#   scripts/bench-nf4.sh cpu          # force a device
#   ITERS=100 TOKENS=4096 RANK=64 scripts/bench-nf4.sh cuda
# Prints: copy bandwidth; NF4+DQ -> bf16 dequantize GB/s and % of copy (target >= 85% on a GPU); GEMV (1 and 4
# rows) against the bandwidth bound; NF4 linear at TOKENS rows; QLoraLinear forward+backward against bitsandbytes
# Linear4bit + PEFT and against bf16 Linear + PEFT; the NF4+DQ memory of a Qwen2.5-72B-shaped model.
# Needs bitsandbytes and peft in the Python environment (scripts/requirements-fixtures.txt; .venv has them).
set -euo pipefail
cd "$(dirname "$0")/.."
device=${1:-}
if [ -z "$device" ]; then
  if nvidia-smi -L >/dev/null 2>&1; then device=cuda; else device=cpu; fi
fi
case "$device" in
  cuda) iters=${ITERS:-50} tokens=${TOKENS:-4096} ;;
  cpu)  iters=${ITERS:-5}  tokens=${TOKENS:-128} ;;
  *) echo "bench-nf4.sh: device must be cpu or cuda, got '$device'" >&2; exit 2 ;;
esac
rank=${RANK:-64}
python=${PYTHON:-python3}
# On a GPU machine without a package index, bitsandbytes comes from .deps/python (scripts/prepare-device-deps.sh).
[ -d .deps/python/bitsandbytes ] && export PYTHONPATH=$(pwd)/.deps/python${PYTHONPATH:+:$PYTHONPATH}
[ -x .venv/bin/python ] && python=${PYTHON:-.venv/bin/python}
bin=""
for dir in ${MEDLLM_BUILD_DIR:-} build-device build; do
  [ -n "$dir" ] && [ -f "$dir/build.ninja" ] && { cmake --build "$dir" --target bench_nf4 -j "${MEDLLM_JOBS:-$(nproc)}" && bin="$dir/bench_nf4"; break; }
done
if [ -z "$bin" ]; then
  # No configured build yet: scripts/device-build.sh configures build-device/ (and runs the tests).
  MEDLLM_CTEST_ARGS="-R quant|gpu" scripts/device-build.sh
  cmake --build build-device --target bench_nf4 -j "${MEDLLM_JOBS:-$(nproc)}"
  bin=build-device/bench_nf4
fi
[ "$device" = cuda ] && { nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true; }
tsv=$(mktemp)
trap 'rm -f "$tsv"' EXIT
echo "== medllm ($bin $device $iters $tokens $rank)"
"$bin" "$device" "$iters" "$tokens" "$rank" | tee "$tsv"
echo "== bitsandbytes + PEFT"
"$python" scripts/bench_nf4_reference.py "$device" "$iters" "$tokens" "$rank" "$tsv"
