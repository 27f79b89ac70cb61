#!/usr/bin/env bash
# NF4 / QLoRA benchmark, medllm against bitsandbytes + PEFT on the same Qwen2.5-7B-shaped projections, one command:
#   scripts/bench-nf4.sh              # on the GPU when one is visible, else on the CPU
#   scripts/bench-nf4.sh cpu          # force a device
#   ITERS=100 TOKENS=4096 RANK=64 scripts/bench-nf4.sh cuda
# Prints: copy bandwidth; NF4+DQ -> bf16 dequantize GB/s and % of copy (target >= 85% on a GPU); GEMV (1 and 4
# rows) against the bandwidth bound; NF4 linear at TOKENS rows; QLoraLinear forward+backward against bitsandbytes
# Linear4bit + PEFT and against bf16 Linear + PEFT; the NF4+DQ memory of a Qwen2.5-72B-shaped model.
# Needs bitsandbytes and peft in the Python environment (scripts/requirements-fixtures.txt; .venv has them).
#
# NF4 decode on the CPU (the fused matrix-vector kernel), against transformers + bitsandbytes in the same run:
#   PYTHON=/tmp/bnb-venv/bin/python scripts/bench-nf4.sh cpu-decode
#   THREADS=1 REPEATS=3 ITERS=20 ROWS="1 4 8" CROSS_ROWS="16 32 48 64 128" PROMPT_LEN=512 NEW_TOKENS=32 \
#     CLOCK=wall scripts/bench-nf4.sh cpu-decode
# Builds a random-weight Qwen2.5-0.5B (configs/models/qwen2.5-0.5b, vocabulary 151,936, bf16), then REPEATS times,
# alternating the two sides so both see the same machine load: `generate --load-in-4bit` at batch 1 in bf16 and
# fp32 (prefill of PROMPT_LEN tokens, decode of NEW_TOKENS); one NF4 projection per call (median of ITERS) at the
# 0.5B, 7B and 72B shapes for each row count in ROWS (72B: the first only); and medllm's fused kernel against its
# dequantize + GEMM path at the 0.5B shapes for CROSS_ROWS (where nf4_cpu_gemv_max_rows comes from). Prints medians
# and ratios and the load average. CLOCK=cpu times the projections in process CPU time (use with THREADS=1 on a
# shared machine); generate always reports both. Needs transformers, bitsandbytes and accelerate in PYTHON's
# environment (scripts/requirements-fixtures.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
device=${1:-}
if [ "$device" = cpu-decode ]; then
  threads=${THREADS:-$(nproc)} repeats=${REPEATS:-3} iters=${ITERS:-20} rows=${ROWS:-"1 4 8"}
  cross_rows=${CROSS_ROWS:-"16 32 48 64 128"} prompt_len=${PROMPT_LEN:-512} new_tokens=${NEW_TOKENS:-32}
  python=${PYTHON:-.venv/bin/python}
  build=${MEDLLM_BUILD_DIR:-build}
  cmake --build "$build" --target bench_nf4 -j "${MEDLLM_JOBS:-$(nproc)}" >/dev/null
  work=$(mktemp -d /tmp/bench-nf4-cpu.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  export OMP_NUM_THREADS=$threads
  "$python" scripts/bench_nf4_cpu_reference.py model "$work/model" configs/models/qwen2.5-0.5b/config.json 2>/dev/null
  echo "== load average at start: $(cut -d' ' -f1-3 /proc/loadavg); $threads threads, prompt $prompt_len," \
    "$new_tokens new tokens, projections timed by ${CLOCK:-wall} clock"
  for rep in $(seq 1 "$repeats"); do
    for dtype in bf16 fp32; do
      "$python" scripts/bench_nf4_cpu_reference.py generate "$work/model" "$prompt_len" "$new_tokens" "$threads" \
        "$dtype" | tee -a "$work/rows.tsv"
      "$build/bench_nf4" generate "$work/model" "$prompt_len" "$new_tokens" "$threads" "$dtype" |
        tee -a "$work/rows.tsv"
    done
    # shellcheck disable=SC2086
    "$python" scripts/bench_nf4_cpu_reference.py layers "$iters" 0.5B,7B,72B $rows | tee -a "$work/rows.tsv"
    # shellcheck disable=SC2086
    "$build/bench_nf4" cpu-layers "$iters" 0.5B,7B,72B $rows | tee -a "$work/rows.tsv"
    # shellcheck disable=SC2086
    "$build/bench_nf4" cpu-layers "$(( (iters + 3) / 4 ))" 0.5B $cross_rows | tee -a "$work/rows.tsv"
    echo "== repeat $rep done, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  done
  "$python" scripts/bench_nf4_cpu_reference.py report "$work/rows.tsv"
  echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  exit 0
fi
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
