#!/usr/bin/env bash
# NF4 benchmark on a GPU machine, one command:
#   scripts/bench-nf4.sh            # builds bench_nf4 (build-device/ via scripts/device-build.sh, or build/) and runs it,
#                                   # then the same shapes through bitsandbytes if it is importable
#   ITERS=100 scripts/bench-nf4.sh
# Prints: d2d copy bandwidth; NF4+DQ -> bf16 dequantize GB/s and % of copy (target >= 85%); fused GEMV (1 and 4
# rows) against the bandwidth bound; training-size nf4_linear vs bf16 linear; bitsandbytes' dequantize_4bit and
# Linear4bit on the same shapes; the NF4+DQ memory of a Qwen2.5-72B-shaped model.
set -euo pipefail
cd "$(dirname "$0")/.."
iters=${ITERS:-50}
python=${PYTHON:-python3}
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
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
echo "== medllm"
"$bin" "$iters"
echo "== bitsandbytes"
"$python" - "$iters" <<'PY' || echo "bitsandbytes not available: pip install bitsandbytes (see scripts/requirements-fixtures.txt)"
import sys, time
import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F
iters = int(sys.argv[1])
dev = "cuda"
def timed(fn, n=iters):
    fn(); torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); return (time.perf_counter() - t0) / n * 1e3
src = torch.empty(1 << 30, dtype=torch.uint8, device=dev); dst = torch.empty_like(src)
copy_gbs = 2 * src.numel() / (timed(lambda: dst.copy_(src)) * 1e6)
print(f"copy     1 GiB d2d                      {copy_gbs:8.1f} GB/s   (bitsandbytes {bnb.__version__})")
for name, out, inp in [("q/o 3584x3584", 3584, 3584), ("k/v 512x3584", 512, 3584),
                       ("gate/up 18944x3584", 18944, 3584), ("down 3584x18944", 3584, 18944)]:
    w = torch.randn(out, inp, device=dev, dtype=torch.bfloat16) * 0.02
    packed, state = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    nbytes = packed.numel() + state.absmax.numel() + state.state2.absmax.numel() * 4 + 2 * w.numel()
    ms = timed(lambda: F.dequantize_4bit(packed, state))
    gbs = nbytes / (ms * 1e6)
    print(f"dequant  {name:22s} NF4+DQ->bf16 {ms:8.3f} ms  {gbs:8.1f} GB/s  {100 * gbs / copy_gbs:5.1f}% of copy")
    layer = bnb.nn.Linear4bit(inp, out, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4",
                              compress_statistics=True)
    layer.weight = bnb.nn.Params4bit(w.cpu(), requires_grad=False, quant_type="nf4", compress_statistics=True)
    layer = layer.to(dev)
    with torch.no_grad():
        for rows in (1, 4):
            x = torch.randn(rows, inp, device=dev, dtype=torch.bfloat16)
            print(f"gemv     {name:22s} rows={rows}     {timed(lambda: layer(x)):8.4f} ms")
        xt = torch.randn(4096, inp, device=dev, dtype=torch.bfloat16)
        print(f"linear   {name:22s} tokens=4096   {timed(lambda: layer(xt), iters // 5 + 1):8.3f} ms")
PY
