#!/usr/bin/env bash
# Generation throughput: medllm's engine (bench_generate) next to HF transformers' generate() on the same random
# model, with the same prompts (prompt_ids) and thread count, interleaved: for each repeat and batch size HF is
# measured and then medllm, so both see the same machine load. Prints prefill and decode tokens/s at batch 1, 8
# and 64, the medllm / HF ratios of every repeat, and their ranges.
#
#   scripts/bench-generate.sh                 # CPU: a small Qwen2-shaped model (fp32)
#   scripts/bench-generate.sh --gpu           # CUDA: a Qwen2.5-7B-shaped model in bf16 (random weights)
#   PROMPT_LEN=128 NEW_TOKENS=64 BATCHES="1 8 64" THREADS=2 REPEATS=3 scripts/bench-generate.sh
#
# Both sides are timed the same way, wall time of whole calls after a warm-up generate(2 tokens) in the same
# process: prefill = B·P / min over two generate(1 token) calls, decode = B·(G-1) / (t(G tokens) - t(1 token)).
# medllm's first call of a process (page faults of the memory-mapped weights, BLAS set-up; once per `medllm generate`
# or `eval` run) is printed as `cold`.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-build/bench_generate}
PY=${PY:-.venv/bin/python}
PROMPT_LEN=${PROMPT_LEN:-64}
NEW_TOKENS=${NEW_TOKENS:-32}
BATCHES=${BATCHES:-"1 8 64"}
THREADS=${THREADS:-$(nproc)}
REPEATS=${REPEATS:-3}
DEVICE=cpu
SHAPE=small
if [[ "${1:-}" == "--gpu" ]]; then DEVICE=cuda; SHAPE=7b; fi
WORK=$(mktemp -d /tmp/bench-generate.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
[[ -x "$BENCH" ]] || { echo "bench-generate: $BENCH not built (cmake --build build --target bench_generate)" >&2; exit 1; }

OMP_NUM_THREADS=$THREADS "$PY" - "$WORK" "$SHAPE" "$DEVICE" "$PROMPT_LEN" "$NEW_TOKENS" "$THREADS" "$BATCHES" \
  "$REPEATS" "$BENCH" <<'PYEOF'
import json, os, subprocess, sys, time
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

work, shape, device, P, G, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
batches = [int(b) for b in sys.argv[7].split()]
repeats, bench = int(sys.argv[8]), sys.argv[9]
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
model = model.to(device)

g = torch.Generator().manual_seed(1)
prompts = {}
for B in batches:
    prompts[B] = torch.randint(3, cfg.vocab_size, (B, P), generator=g)
    with open(os.path.join(work, f"prompts_{B}.jsonl"), "w") as f:
        for row in prompts[B].tolist():
            f.write(json.dumps({"prompt_ids": row}) + "\n")

def hf(B):
    x = prompts[B].to(device)
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
    t1 = min(run(1), run(1))
    tg = run(G)
    return {"prefill": B * P / t1, "decode": B * (G - 1) / max(tg - t1, 1e-9)}

def medllm(B):
    out = subprocess.run([bench, os.path.join(work, "model"), os.path.join(work, f"prompts_{B}.jsonl"), str(B), str(G),
                          str(threads), device, "bf16" if dtype == torch.bfloat16 else "fp32"], check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    if r["threads"] != threads:
        sys.exit(f"bench-generate: bench_generate ran {r['threads']} threads, HF {threads}")
    return r

print(f"threads {threads}, prompt {P} tokens, {G} new tokens, load average {os.getloadavg()[0]:.1f} at start")
print(f"{'rep':<3} {'batch':<5} | {'medllm prefill':>14} {'HF prefill':>11} {'ratio':>6} {'(cold)':>7} | "
      f"{'medllm decode':>13} {'HF decode':>10} {'ratio':>6}", flush=True)
ratios = {B: {"prefill": [], "decode": []} for B in batches}
for rep in range(repeats):
    for B in batches:
        h, m = hf(B), medllm(B)
        rp, rd = m["prefill"] / h["prefill"], m["decode"] / h["decode"]
        ratios[B]["prefill"].append(rp)
        ratios[B]["decode"].append(rd)
        print(f"{rep:<3} {B:<5} | {m['prefill']:14.1f} {h['prefill']:11.1f} {rp:5.2f}x {m['cold_prefill'] / h['prefill']:6.2f}x | "
              f"{m['decode']:13.1f} {h['decode']:10.1f} {rd:5.2f}x", flush=True)
print(f"load average {os.getloadavg()[0]:.1f} at end; medllm / HF over {repeats} repeats (min-max):")
for B in batches:
    p, d = ratios[B]["prefill"], ratios[B]["decode"]
    print(f"batch {B:<3} prefill {min(p):.2f}-{max(p):.2f}x  decode {min(d):.2f}-{max(d):.2f}x")
PYEOF
