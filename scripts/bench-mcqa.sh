#!/usr/bin/env bash
# Log-likelihood scoring speed of `medllm eval mcqa` (the prompt prefilled once per question into a KV cache, the
# options run as one batch of continuations) next to a transformers loop doing the same computation the way
# lm-evaluation-harness's HFLM does it (each option a full prompt + option sequence; one forward per question with
# its options right-padded as a batch; fp32 log-softmax), on the same random model, the same questions and tokens,
# in the same run. Both sides' log-likelihoods are compared (max abs difference printed).
#
#   scripts/bench-mcqa.sh                    # CPU, a small Qwen2-shaped model (fp32), N=24 questions
#   N=48 THREADS=2 scripts/bench-mcqa.sh
#   scripts/bench-mcqa.sh --gpu              # CUDA, a Qwen2.5-7B-shaped model in bf16 (random weights)
#
# medllm's wall time is the scoring phase (its progress line's questions/s; model load excluded); HF's is the sum
# of its per-question forwards after a warm-up question. Both are also given per CPU-second (medllm: the whole
# command, model load included; HF: the loop), which a busy shared machine disturbs less than wall time
# (THREADS=1 keeps idle OpenMP workers from spinning into the CPU time).
set -euo pipefail
cd "$(dirname "$0")/.."
MEDLLM=${MEDLLM:-build/medllm}
PY=${PY:-.venv/bin/python}
N=${N:-24}
THREADS=${THREADS:-$(nproc)}
DEVICE=cpu
SHAPE=small
if [[ "${1:-}" == "--gpu" ]]; then DEVICE=cuda; SHAPE=7b; fi
WORK=$(mktemp -d /tmp/bench-mcqa.XXXXXX)
[[ -n "${KEEP:-}" ]] || trap 'rm -rf "$WORK"' EXIT
[[ -x "$MEDLLM" ]] || { echo "bench-mcqa: $MEDLLM not built (cmake --build build --target medllm)" >&2; exit 1; }

OMP_NUM_THREADS=$THREADS "$PY" - "$WORK" "$SHAPE" "$DEVICE" "$N" "$THREADS" "$MEDLLM" <<'PYEOF'
import json, os, random, re, resource, subprocess, sys, time
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

work, shape, device, n, threads, medllm = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
sys.path.insert(0, os.path.join(os.getcwd(), "scripts"))
# The tests' byte-level tokenizer with Qwen2's pre-tokenizer, lm-eval's _encode_pair and prompt rendering.
from make_mcqa_fixtures import MEDQA_PROMPT, LABELS5, bytes_to_unicode, encode_pair, render, tiny_tokenizer

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
tok = tiny_tokenizer()
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

# MedQA-shaped questions: a long Japanese stem (~100 characters, ~300 byte tokens), five options of 4-10 characters,
# each option's text scored (choice: option), as the paper's JMedBench tasks.
rng = random.Random(0)
kana = [chr(c) for c in range(0x3042, 0x3093)] + list("患者発熱咳嗽血圧心拍呼吸検査所見診断治療薬")
def text(k):
    return "".join(rng.choice(kana) for _ in range(k))
qs = [dict(id=f"b{i}", question=text(rng.randint(90, 110)) + "？", options=[text(rng.randint(4, 10)) for _ in range(5)],
           answer=rng.randrange(5)) for i in range(n)]
with open(os.path.join(work, "bench.jsonl"), "w") as f:
    for q in qs:
        f.write(json.dumps(q, ensure_ascii=False) + "\n")
with open(os.path.join(work, "bench.yaml"), "w") as f:
    f.write("base: medqa-jp\nname: bench\nchoice: option\n")

out = os.path.join(work, "out")
cmd = [medllm, "--threads", str(threads), "eval", "mcqa", "--task", os.path.join(work, "bench.yaml"), "--data",
       os.path.join(work, "bench.jsonl"), "--model", model_dir, "--output", out, "--device", device,
       "--batch-size", "8"]
def child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
c0 = child_cpu()
subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
m_cpu = child_cpu() - c0  # the whole command, model load included
log = open(os.path.join(out, "medllm.log"), encoding="utf-8").read()
m_rate = float(re.findall(r"mcqa bench loglik: \d+/\d+ \(100%\) \| ([0-9.]+) questions/s", log)[-1])
m_lls = {}
for line in open(os.path.join(out, "predictions", "bench.jsonl"), encoding="utf-8"):
    r = json.loads(line)
    m_lls[r["id"]] = r["logprobs"]

# transformers: lm-eval's HFLM computation, one forward per question with its options as a right-padded batch.
model = model.to(device)
@torch.no_grad()
def hf(q):
    prompt = render(MEDQA_PROMPT, dict(q, context=""), LABELS5)
    pairs = [encode_pair(tok, prompt, " " + o) for o in q["options"]]
    seqs = [ctx + cont[:-1] for ctx, cont in pairs]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    logits = model(ids.to(device), attention_mask=mask.to(device)).logits
    lls = []
    for i, (ctx, cont) in enumerate(pairs):
        lp = torch.log_softmax(logits[i, len(ctx) - 1:len(ctx) - 1 + len(cont)].float(), dim=-1)
        lls.append(float(lp.gather(1, torch.tensor(cont, device=device)[:, None]).sum()))
    return lls, len(pairs[0][0])
hf(qs[0])  # warm-up
if device == "cuda":
    torch.cuda.synchronize()
t, c = time.perf_counter(), time.process_time()
h_lls, prompt_tokens = {}, []
for q in qs:
    h_lls[q["id"]], p = hf(q)
    prompt_tokens.append(p)
if device == "cuda":
    torch.cuda.synchronize()
h_rate = n / (time.perf_counter() - t)
h_cpu = time.process_time() - c
diff = max(abs(a - b) for q in qs for a, b in zip(m_lls[q["id"]], h_lls[q["id"]]))
print(f"model {shape} ({device}, {dtype}), {n} questions x 5 options, prompts {min(prompt_tokens)}-{max(prompt_tokens)} tokens, threads={threads}")
print(f"medllm eval mcqa:   {m_rate:.2f} questions/s (wall, scoring phase); {n / m_cpu:.2f} questions per CPU-second (whole command)")
print(f"transformers loop:  {h_rate:.2f} questions/s (wall); {n / h_cpu:.2f} questions per CPU-second")
print(f"ratio medllm / HF:  {m_rate / h_rate:.2f}x wall, {(n / m_cpu) / (n / h_cpu):.2f}x CPU time   (max |ll difference| {diff:.2e})")
PYEOF
