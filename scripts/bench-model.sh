#!/usr/bin/env bash
# Model throughput: medllm vs HF transformers (SDPA) on the same random Qwen2 shape, in the same run.
#   scripts/bench-model.sh                 # small shape on CPU, fp32
#   scripts/bench-model.sh 7b cuda bf16    # Qwen2.5-7B shape on a GPU machine (2 layers unless LAYERS=28)
# Prints forward and forward+backward tokens/s for both and the ratio medllm / HF.
set -euo pipefail
cd "$(dirname "$0")/.."
shape=${1:-small}
device=${2:-cpu}
dtype=${3:-fp32}
python=${PYTHON:-.venv/bin/python}
bin=${MEDLLM_BENCH_BIN:-build/bench_model}
[ -x "$bin" ] || { echo "missing $bin: run scripts/setup.sh" >&2; exit 1; }
case "$shape" in
  small) H=512 L=${LAYERS:-4} NH=8 NKV=2 I=1408 V=32000 B=${BATCH:-4} S=${SEQ:-256} ITERS=${ITERS:-5} ;;
  7b)    H=3584 L=${LAYERS:-2} NH=28 NKV=4 I=18944 V=152064 B=${BATCH:-4} S=${SEQ:-2048} ITERS=${ITERS:-10} ;;
  *) echo "unknown shape '$shape' (small or 7b)" >&2; exit 2 ;;
esac
echo "shape=$shape H=$H L=$L heads=$NH/$NKV I=$I V=$V batch=$B seq=$S dtype=$dtype device=$device threads=$(nproc)"
ours=$("$bin" $H $L $NH $NKV $I $V $B $S $dtype $device $ITERS)
theirs=$("$python" - $H $L $NH $NKV $I $V $B $S $dtype $device $ITERS <<'PY'
import json, sys, time
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
H, L, NH, NKV, I, V, B, S = map(int, sys.argv[1:9]); dtype, device, iters = sys.argv[9], sys.argv[10], int(sys.argv[11])
cfg = Qwen2Config(hidden_size=H, num_hidden_layers=L, num_attention_heads=NH, num_key_value_heads=NKV,
                  intermediate_size=I, vocab_size=V, rope_theta=1e6, attn_implementation="sdpa")
torch.manual_seed(0)
model = Qwen2ForCausalLM(cfg).to(device=device, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
ids = torch.randint(0, V, (B, S), device=device)
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
def timed(fn):
    fn(); sync(); t0 = time.perf_counter()
    for _ in range(iters): fn()
    sync(); return (time.perf_counter() - t0) / iters
def fwd():
    with torch.no_grad(): model(input_ids=ids)
def fwd_bwd():
    model.zero_grad(); model(input_ids=ids, labels=ids).loss.backward()
f, fb = timed(fwd), timed(fwd_bwd)
print(json.dumps({"impl": "transformers", "forward_tok_s": B * S / f, "forward_backward_tok_s": B * S / fb}))
PY
)
echo "$ours"
echo "$theirs"
"$python" - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for k in ("forward_tok_s", "forward_backward_tok_s"):
    print(f"{k:24s} medllm {a[k]:10.1f}  transformers {b[k]:10.1f}  ratio {a[k] / b[k]:.2f}x")
PY
