#!/usr/bin/env bash
# Generation throughput: medllm's engine next to HF transformers' generate() on the same random model, in the same
# run, with the same prompts (prompt_ids) and thread count. Prints prefill and decode tokens/s at batch 1, 8 and 64
# and the medllm / HF ratio.
#
#   scripts/bench-generate.sh                 # CPU: a small Qwen2-shaped model (fp32)
#   scripts/bench-generate.sh --gpu           # CUDA: a Qwen2.5-7B-shaped model in bf16 (random weights)
#   PROMPT_LEN=128 NEW_TOKENS=64 BATCHES="1 8 64" THREADS=2 scripts/bench-generate.sh
#
# Decode tok/s counts the tokens chosen by decode steps; HF's is B·(G-1) / (t(G tokens) - t(1 token)).
set -euo pipefail
cd "$(dirname "$0")/.."
MEDLLM=${MEDLLM:-build/medllm}
PY=${PY:-.venv/bin/python}
PROMPT_LEN=${PROMPT_LEN:-64}
NEW_TOKENS=${NEW_TOKENS:-32}
BATCHES=${BATCHES:-"1 8 64"}
THREADS=${THREADS:-$(nproc)}
DEVICE=cpu
SHAPE=small
if [[ "${1:-}" == "--gpu" ]]; then DEVICE=cuda; SHAPE=7b; fi
WORK=$(mktemp -d /tmp/bench-generate.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
[[ -x "$MEDLLM" ]] || { echo "bench-generate: $MEDLLM not built (cmake --build build --target medllm)" >&2; exit 1; }

"$PY" - "$WORK" "$SHAPE" "$DEVICE" "$PROMPT_LEN" "$NEW_TOKENS" "$THREADS" "$BATCHES" <<'PYEOF'
import json, os, sys, time
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

work, shape, device, P, G, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
batches = [int(b) for b in sys.argv[7].split()]
torch.set_num_threads(threads)
torch.manual_seed(0)
if shape == "7b":  # Qwen2.5-7B dimensions
    cfg = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                      num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                      rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    dtype = torch.bfloat16
else:
    cfg = Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e6,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    dtype = torch.float32
model = Qwen2ForCausalLM(cfg).to(dtype).eval()
model_dir = os.path.join(work, "model")
model.save_pretrained(model_dir, safe_serialization=True)
gc = os.path.join(model_dir, "generation_config.json")
if os.path.exists(gc):
    os.remove(gc)

# A byte-level tokenizer so medllm loads the folder; the prompts are token ids, so its content does not matter.
bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
cs, n = bs[:], 0
for b in range(256):
    if b not in bs:
        bs.append(b); cs.append(256 + n); n += 1
vocab = {}
for b, c in zip(bs, cs):
    vocab[chr(c)] = 3 + b
json.dump(vocab, open(os.path.join(model_dir, "vocab.json"), "w"))
open(os.path.join(model_dir, "merges.txt"), "w").write("#version: 0.2\n")

model = model.to(device)
g = torch.Generator().manual_seed(1)
results = {}
for B in batches:
    ids = torch.randint(3, cfg.vocab_size, (B, P), generator=g)
    with open(os.path.join(work, f"prompts_{B}.jsonl"), "w") as f:
        for row in ids.tolist():
            f.write(json.dumps({"prompt_ids": row}) + "\n")
    x = ids.to(device)
    mask = torch.ones_like(x)

    def run(new):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(x, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(2)  # warm-up
    t1 = min(run(1) for _ in range(2))
    tg = run(G)
    results[B] = {"prefill": B * P / t1, "decode": B * (G - 1) / max(tg - t1, 1e-9)}
    print(f"HF batch {B}: prefill {results[B]['prefill']:.1f} tok/s, decode {results[B]['decode']:.1f} tok/s",
          file=sys.stderr)
json.dump(results, open(os.path.join(work, "hf.json"), "w"))
PYEOF

printf "%-6s | %14s %14s %6s | %14s %14s %6s\n" batch "medllm prefill" "HF prefill" ratio "medllm decode" "HF decode" ratio
for B in $BATCHES; do
  DTYPE=fp32; [[ $DEVICE == cuda ]] && DTYPE=bf16
  # A short warm-up run, then the measured one.
  OMP_NUM_THREADS=$THREADS "$MEDLLM" generate --model "$WORK/model" --input "$WORK/prompts_$B.jsonl" \
    --output "$WORK/warm_$B.jsonl" --max-new-tokens 2 --ignore-eos --batch-size "$B" --device $DEVICE --dtype $DTYPE \
    >/dev/null 2>&1
  LOG=$(OMP_NUM_THREADS=$THREADS "$MEDLLM" generate --model "$WORK/model" --input "$WORK/prompts_$B.jsonl" \
    --output "$WORK/out_$B.jsonl" --max-new-tokens "$NEW_TOKENS" --ignore-eos --batch-size "$B" --device $DEVICE \
    --dtype $DTYPE 2>&1 | grep "| prefill:")
  "$PY" - "$WORK/hf.json" "$B" "$LOG" <<'PYEOF'
import json, re, sys
hf = json.load(open(sys.argv[1]))[sys.argv[2]]
m = re.search(r"prefill: \d+ tokens, [\d.]+ s, ([\d.]+) tok/s \| decode: \d+ tokens, [\d.]+ s, ([\d.]+) tok/s", sys.argv[3])
pre, dec = float(m.group(1)), float(m.group(2))
print(f"{sys.argv[2]:<6} | {pre:14.1f} {hf['prefill']:14.1f} {pre / hf['prefill']:5.2f}x | "
      f"{dec:14.1f} {hf['decode']:14.1f} {dec / hf['decode']:5.2f}x")
PYEOF
done
