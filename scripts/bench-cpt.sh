#!/usr/bin/env bash
# Training speed and memory: `medllm cpt` next to HF transformers.Trainer + PEFT on the same model, the same token
# rows and the same settings, in the same run (CPU, fp32).
#   scripts/bench-cpt.sh                       # LoRA over fp32 weights, then QLoRA (NF4 base; HF: bitsandbytes)
#   MODES=lora STEPS=8 WARM=2 scripts/bench-cpt.sh
#   THREADS=1 scripts/bench-cpt.sh             # one intra-op thread each: the CPU-time figures are then the
#                                              # robust ones on a machine shared with other jobs
# Model: a random Qwen2 of 4 layers x 512 hidden (8 heads, 2 KV heads, MLP 1408, byte-level vocabulary of 512, as
# the tests' tokenizer), seq 512, batch 4, no accumulation, LoRA r 16 / alpha 32 / dropout 0.05 on all seven
# projections, AdamW lr 1e-4, constant schedule, clipping 1.0, no activation checkpointing (HF's default; medllm's
# default is on, switched off here so both do the same work), rows read in order.
# Rows: medllm tokenizes a synthetic corpus (IgakuQA texts, perturbed) and packs it with `packing: concat` (full
# rows, attention across documents, like HF's plain causal LM on chunked text); the HF side reads the same tokens
# from medllm's token cache and cuts them into the same 512-token rows.
# Measured: tokens/s over the steps after WARM warm-up steps (medllm: metrics.jsonl's per-step windows; HF: a
# TrainerCallback timing on_step_begin..on_step_end), and each process's peak RSS (/usr/bin/time -v). Also tokens
# per CPU-second over the same steps (medllm: user+sys of a STEPS run minus that of a WARM-step run of the same
# config; HF: time.process_time() around each step), which a loaded machine disturbs far less than wall time.
# Both use THREADS intra-op threads (default: all cores). Needs MEDLLM_BIN (default build/medllm) and .venv with
# scripts/requirements-fixtures.txt (transformers, peft, bitsandbytes).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${MEDLLM_BIN:-build/medllm}
python=${PYTHON:-.venv/bin/python}
modes=${MODES:-lora qlora}
steps=${STEPS:-8}
warm=${WARM:-2}
cores=$(nproc)  # before OMP_NUM_THREADS is set: nproc honours it
threads=${THREADS:-$cores}
export OMP_NUM_THREADS=$threads
work=${MEDLLM_BENCH_DIR:-$(mktemp -d /tmp/bench-cpt.XXXXXX)}
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
[ -x "$bin" ] || { echo "bench-cpt: missing $bin (scripts/setup.sh)" >&2; exit 1; }
[ "$steps" -gt "$warm" ] || { echo "bench-cpt: STEPS must exceed WARM" >&2; exit 2; }
echo "cores: $cores; threads: $threads; load: $(cut -d' ' -f1-3 /proc/loadavg); steps $steps (first $warm not timed)"

"$python" - "$work" <<'PY' 2>&1 | grep -v "gemm_4bit\|Loading weights" || true
import json, os, random, shutil, sys
from pathlib import Path
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
work = Path(sys.argv[1])
torch.manual_seed(0)
cfg = Qwen2Config(vocab_size=512, hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, bos_token_id=256, eos_token_id=256)
Qwen2ForCausalLM(cfg).save_pretrained(work / "model", safe_serialization=True)
gc = work / "model" / "generation_config.json"
if gc.exists():
    gc.unlink()
rng = random.Random(7)
texts = []
for path in sorted(Path("../shared/igakuqa_data/data").glob("*/*.jsonl")):
    if "_metadata" in path.name or "_translate" in path.name:
        continue
    for line in path.read_text(encoding="utf-8").splitlines():
        q = json.loads(line)
        texts.append(q["problem_text"] + "\n" + "\n".join(q.get("choices", [])))
with open(work / "corpus.jsonl", "w", encoding="utf-8") as f:
    for _ in range(400):  # ~1 MB of UTF-8 = ~1 M byte tokens: far more than the steps read
        f.write(json.dumps({"text": "\n\n".join(rng.choice(texts) for _ in range(rng.randint(1, 6)))},
                           ensure_ascii=False) + "\n")
PY

tps_of_metrics() {  # tokens/s over the steps after WARM, from metrics.jsonl's one-step windows
    "$python" - "$1" "$warm" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l and '"tokens_per_second"' in l]
warm = int(sys.argv[2])
prev = {r["step"]: r["tokens_seen"] for r in recs}
tok = sec = 0.0
for r in recs:
    if r["step"] <= warm:
        continue
    t = r["tokens_seen"] - prev.get(r["step"] - 1, 0)
    tok += t
    sec += t / r["tokens_per_second"]
print(f"{tok / sec:.0f}")
PY
}
rss_of() { echo $(( $(sed -n 's/^\s*Maximum resident set size (kbytes): //p' "$1") / 1024 )); }
cpu_of() {  # user + sys seconds
    echo "$(sed -n 's/^\s*User time (seconds): //p' "$1") + $(sed -n 's/^\s*System time (seconds): //p' "$1")" | bc
}

for mode in $modes; do
    case $mode in lora) quant=false ;; qlora) quant=true ;; *) echo "bench-cpt: unknown mode $mode" >&2; exit 2 ;; esac
    rm -rf "$work/run" "$work/cache"
    cat > "$work/cpt.yaml" <<YAML
model: {path: $work/model, tokenizer: tests/fixtures/train/byte-tokenizer}
output: $work/run
data:
  sources: [{path: $work/corpus.jsonl}]
  eos_token: <|endoftext|>
  cache_dir: $work/cache
  seq_len: 512
  packing: concat
  validation: {documents: 2}
eval_guard: {enabled: false}
lora: {quantize_base: $quant, r: 16, alpha: 32, dropout: 0.05}
optim: {lr: 1.0e-4, max_grad_norm: 1.0}
schedule: {name: constant_with_warmup, warmup_steps: 0}
training:
  max_steps: $steps
  batch_size: 4
  grad_accum: 1
  activation_checkpointing: false
  device: cpu
  logging_steps: 1
  eval_steps: 0
  eval_on_start: false
  save_steps: 100000
YAML
    "$bin" --log-level warn prepare-corpus --config "$work/cpt.yaml" > /dev/null
    for n in "$warm" "$steps"; do  # the WARM-step run gives the CPU time of everything but the timed steps
        rm -rf "$work/run"
        /usr/bin/time -v -o "$work/time_medllm_$n.txt" "$bin" --threads "$threads" --log-level warn cpt \
            --config "$work/cpt.yaml" --set "training.max_steps=$n" --resume never > /dev/null
    done
    m_tps=$(tps_of_metrics "$work/run/metrics.jsonl")
    m_rss=$(rss_of "$work/time_medllm_$steps.txt")
    m_cpu=$(echo "$(cpu_of "$work/time_medllm_$steps.txt") - $(cpu_of "$work/time_medllm_$warm.txt")" | bc)
    m_cpu_tps=$(echo "scale=1; ($steps - $warm) * 4 * 512 / $m_cpu" | bc)

    /usr/bin/time -v -o "$work/time_hf.txt" "$python" - "$work" "$mode" "$steps" "$warm" "$threads" > "$work/hf.txt" 2> "$work/hf.err" <<'PY' || { tail -20 "$work/hf.err" >&2; exit 1; }
import glob, sys, time
import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments, default_data_collator
work, mode, steps, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]))
seq, batch = 512, 4
tokens = np.concatenate([np.fromfile(p, dtype="<u4") for p in sorted(glob.glob(f"{work}/cache/tokens-*.u32"))])
rows = torch.from_numpy(tokens[: (len(tokens) // seq) * seq].astype(np.int64)).view(-1, seq)[: steps * batch]
kw = {}
if mode == "qlora":
    from transformers import BitsAndBytesConfig
    kw = dict(quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                     bnb_4bit_compute_dtype=torch.float32), device_map="cpu")
model = AutoModelForCausalLM.from_pretrained(f"{work}/model", dtype=torch.float32, **kw)
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"]))

class Rows(torch.utils.data.Dataset):
    def __len__(self):
        return rows.shape[0]
    def __getitem__(self, i):
        return {"input_ids": rows[i], "labels": rows[i]}

times, cpu = [], []
class Timer(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        self.t0, self.c0 = time.perf_counter(), time.process_time()
    def on_step_end(self, args, state, control, **kw):
        times.append(time.perf_counter() - self.t0)
        cpu.append(time.process_time() - self.c0)

args = TrainingArguments(output_dir=f"{work}/hf_out", per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                         max_steps=steps, learning_rate=1e-4, lr_scheduler_type="constant", max_grad_norm=1.0,
                         logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                         train_sampling_strategy="sequential", dataloader_num_workers=0)
Trainer(model=model, args=args, train_dataset=Rows(), data_collator=default_data_collator, callbacks=[Timer()]).train()
timed = times[warm:]
print(f"{len(timed) * batch * seq / sum(timed):.0f} {len(timed) * batch * seq / sum(cpu[warm:]):.1f}")
PY
    read -r h_tps h_cpu_tps < <(tail -1 "$work/hf.txt")
    h_rss=$(rss_of "$work/time_hf.txt")
    ratio=$(echo "scale=2; $m_tps / $h_tps" | bc)
    cpu_ratio=$(echo "scale=2; $m_cpu_tps / $h_cpu_tps" | bc)
    mem=$(echo "scale=2; $m_rss / $h_rss" | bc)
    label=$([ "$mode" = lora ] && echo "LoRA (fp32 base)" || echo "QLoRA (NF4 base; HF: bitsandbytes)")
    echo "$label: medllm $m_tps tok/s ($m_cpu_tps per CPU-s), peak RSS $m_rss MB | HF Trainer + PEFT $h_tps tok/s" \
         "($h_cpu_tps per CPU-s), peak RSS $h_rss MB | speed ${ratio}x wall, ${cpu_ratio}x CPU time; memory ${mem}x of HF's"
done
