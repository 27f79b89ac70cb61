#!/usr/bin/env bash
# build-prefs sampling speed: `medllm build-prefs` (the engine: n samples share one prefill, several questions per
# batch) next to HF transformers' generate(do_sample=True, num_return_sequences=n) on the same random model, the
# same rendered 3-shot prompts (the fixture questions, byte-level tiny tokenizer, so prompts are long) and settings,
# in the same run. HF runs one question per generate() call (its num_return_sequences copies the prompt n times).
#
#   scripts/bench-prefs.sh                        # CPU, a small Qwen2-shaped model (fp32)
#   N=8 NEW_TOKENS=32 THREADS=2 scripts/bench-prefs.sh
#   scripts/bench-prefs.sh --gpu                  # CUDA, a Qwen2.5-7B-shaped model in bf16 (random weights)
#
# Prints samples/s and generated tokens/s of each side and the medllm / HF ratio. medllm's time is the sampling
# phase from summary.json (sampling_seconds: generate_to_file, model load excluded); HF's is the sum of its
# generate() calls after a warm-up call.
set -euo pipefail
cd "$(dirname "$0")/.."
MEDLLM=${MEDLLM:-build/medllm}
PY=${PY:-.venv/bin/python}
N=${N:-8}
NEW_TOKENS=${NEW_TOKENS:-32}
THREADS=${THREADS:-$(nproc)}
DEVICE=cpu
SHAPE=small
if [[ "${1:-}" == "--gpu" ]]; then DEVICE=cuda; SHAPE=7b; fi
WORK=$(mktemp -d /tmp/bench-prefs.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
[[ -x "$MEDLLM" ]] || { echo "bench-prefs: $MEDLLM not built (cmake --build build --target medllm)" >&2; exit 1; }

OMP_NUM_THREADS=$THREADS "$PY" - "$WORK" "$SHAPE" "$DEVICE" "$N" "$NEW_TOKENS" "$THREADS" "$MEDLLM" <<'PYEOF'
import json, os, subprocess, sys, time
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

work, shape, device, n, G, threads, medllm = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
sys.path.insert(0, os.path.join(os.getcwd(), "scripts"))
from prefs_trl_roundtrip import tiny_tokenizer, bytes_to_unicode  # the byte-level tokenizer of the tests

torch.set_num_threads(threads)
torch.manual_seed(0)
if shape == "7b":
    cfg = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                      num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1e6,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    dtype = torch.bfloat16
else:
    cfg = Qwen2Config(vocab_size=512, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=8192, rope_theta=1e6,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    dtype = torch.float32
model = Qwen2ForCausalLM(cfg).to(dtype).eval()
model_dir = os.path.join(work, "model")
model.save_pretrained(model_dir, safe_serialization=True)
gc = os.path.join(model_dir, "generation_config.json")
if os.path.exists(gc):
    os.remove(gc)
tok = tiny_tokenizer()  # HF side; medllm reads the same vocabulary as vocab.json + merges.txt (write_tiny_tokenizer)
sym = bytes_to_unicode()
vocab = {sym[b]: 3 + b for b in range(256)}
merges = [(sym[ord(" ")], "t"), ("h", "e"), (sym[ord(" ")] + "t", "he"), ("i", "n"), ("e", "r")]
for i, (a, b) in enumerate(merges):
    vocab[a + b] = 259 + i
json.dump(vocab, open(os.path.join(model_dir, "vocab.json"), "w"))
with open(os.path.join(model_dir, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
json.dump({"added_tokens_decoder": {"0": {"content": "<|im_end|>", "special": True},
                                    "1": {"content": "<|im_start|>", "special": True},
                                    "2": {"content": "<|endoftext|>", "special": True}},
           "eos_token": "<|endoftext|>"}, open(os.path.join(model_dir, "tokenizer_config.json"), "w"))

# medllm: the real command on the fixture questions, base format, no eos-free mode (a random model rarely emits
# id 2 or the stop string; generated tokens are counted on both sides).
out = os.path.join(work, "prefs")
cmd = [medllm, "--threads", str(threads), "build-prefs", "--questions", "tests/fixtures/train/prefs_questions.jsonl",
       "--model", model_dir, "--output", out, "--device", device, "--prompt-format", "base", "-n", str(n),
       "--max-new-tokens", str(G), "--temperature", "1", "--seed", "0", "--batch-size", "64"]
subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
summary = json.load(open(os.path.join(out, "summary.json")))
m_samples = summary["sampled_now"]
m_seconds = summary["sampling_seconds"]
m_tokens = sum(c["generated_tokens"] for line in open(os.path.join(out, "samples.jsonl"))
               for c in json.loads(line)["completions"])
prompts = {}
for line in open(os.path.join(out, "pairs.jsonl")):
    r = json.loads(line)
    prompts.setdefault(r["problem_id"], r["prompt"])
prompts = list(prompts.values())

model = model.to(device)
def hf(prompt, new_tokens):
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]], device=device)
    with torch.no_grad():
        outp = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_p=1.0,
                              top_k=0, num_return_sequences=n, max_new_tokens=new_tokens, eos_token_id=None,
                              pad_token_id=0)
    return (outp.shape[1] - ids.shape[1]) * n
hf(prompts[0], 2)  # warm-up
if device == "cuda":
    torch.cuda.synchronize()
t = time.perf_counter()
h_tokens = sum(hf(p, G) for p in prompts)
if device == "cuda":
    torch.cuda.synchronize()
h_seconds = time.perf_counter() - t
h_samples = n * len(prompts)
prompt_tokens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
print(f"model {shape} ({device}, {dtype}), {len(prompts)} questions, prompts {min(prompt_tokens)}-{max(prompt_tokens)} tokens, n={n}, max_new_tokens={G}, threads={threads}")
print(f"medllm build-prefs: {m_samples} samples, {m_tokens} tokens in {m_seconds:.2f} s: {m_samples/m_seconds:.2f} samples/s, {m_tokens/m_seconds:.1f} tok/s")
print(f"HF generate:        {h_samples} samples, {h_tokens} tokens in {h_seconds:.2f} s: {h_samples/h_seconds:.2f} samples/s, {h_tokens/h_seconds:.1f} tok/s")
print(f"ratio medllm / HF: samples/s {(m_samples/m_seconds)/(h_samples/h_seconds):.2f}x, tokens/s {(m_tokens/m_seconds)/(h_tokens/h_seconds):.2f}x")
PYEOF
