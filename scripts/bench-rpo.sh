#!/usr/bin/env bash
# RPO training speed and memory: `medllm rpo` next to TRL's DPOTrainer + PEFT on the same random Qwen2-shaped model,
# the same preference pairs (byte-level tokenizer of the tests), the same LoRA (r 8, all seven projections) and
# settings (fp32, batch 4 pairs, rpo_alpha 10, no gradient checkpointing, dropout off), in the same run, with the
# reference forward every step and with precomputed reference log-probs.
#
#   scripts/bench-rpo.sh                  # CPU (STEPS=6 THREADS=$(nproc) PAIRS=48)
#   STEPS=10 THREADS=2 scripts/bench-rpo.sh
#   SHARE_PROMPT=true scripts/bench-rpo.sh   # medllm packs chosen + rejected in one row, the prompt run once
#
# Prints pairs/s of the training steps (the first step is a warm-up and left out on both sides; the precompute
# pass is not counted) and the peak resident memory of each process (/usr/bin/time %M), and the medllm / TRL
# ratios. TRL: trl 1.16.0 of .venv (scripts/requirements-fixtures.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
MEDLLM=${MEDLLM:-build/medllm}
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-6}
THREADS=${THREADS:-$(nproc)}
PAIRS=${PAIRS:-48}
SHARE_PROMPT=${SHARE_PROMPT:-false}  # medllm: chosen + rejected in one row, the prompt computed once (TRL: two rows)
WORK=$(mktemp -d /tmp/bench-rpo.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
[[ -x "$MEDLLM" ]] || { echo "bench-rpo: $MEDLLM not built (cmake --build build --target medllm)" >&2; exit 1; }

# The model and the pairs.
"$PY" - "$WORK" "$PAIRS" <<'PYEOF'
import json, os, random, sys
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
work, n = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
cfg = Qwen2Config(vocab_size=512, hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, bos_token_id=256, eos_token_id=256)
Qwen2ForCausalLM(cfg).save_pretrained(os.path.join(work, "model"), safe_serialization=True)
gc = os.path.join(work, "model", "generation_config.json")
if os.path.exists(gc):
    os.remove(gc)
rng = random.Random(0)
words = "the patient fever cough iron anemia reticulocyte hemoglobin ferritin answer explanation because first".split()
with open(os.path.join(work, "pairs.jsonl"), "w") as f:
    for i in range(n):
        say = lambda k: " ".join(rng.choice(words) for _ in range(k))
        f.write(json.dumps({"prompt": f"Question {i}: {say(40)}\n Explanation:", "chosen": " " + say(30),
                            "rejected": " " + say(rng.randint(15, 35)), "pair_type": "gt_chosen"}) + "\n")
PYEOF

run_medllm() {  # $1 = precompute true|false
    local out="$WORK/medllm-$1"
    /usr/bin/time -f %M -o "$out.rss" "$MEDLLM" --threads "$THREADS" --log-level warn rpo --resume never \
        --set model.path="$WORK/model" --set model.tokenizer=tests/fixtures/train/byte-tokenizer \
        --set output="$out" --set data.path="$WORK/pairs.jsonl" --set data.eos_token='<|endoftext|>' \
        --set data.shuffle=false --set eval_guard.enabled=false --set lora.quantize_base=false --set lora.r=8 \
        --set lora.alpha=16 --set loss.rpo_alpha=10 --set reference.precompute="$1" --set optim.lr=1e-4 \
        --set schedule.name=constant --set training.batch_size=4 --set training.max_steps="$STEPS" \
        --set training.activation_checkpointing=false --set training.device=cpu --set training.logging_steps=1 \
        --set training.save_steps=1000000 --set training.share_prompt="$SHARE_PROMPT" > /dev/null
    "$PY" - "$out" <<'PYEOF'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if '"pairs_per_second"' in l]
later = recs[1:]  # step 1 is the warm-up
secs = sum(4 / r["pairs_per_second"] for r in later)
rss = int(open(sys.argv[1] + ".rss").read().split()[-1])
print(json.dumps({"pairs_per_second": 4 * len(later) / secs, "peak_rss_mb": rss / 1024}))
PYEOF
}

run_trl() {  # $1 = precompute true|false
    OMP_NUM_THREADS=$THREADS /usr/bin/time -f %M -o "$WORK/trl-$1.rss" "$PY" - "$WORK" "$1" "$STEPS" "$THREADS" \
        > "$WORK/trl-$1.json" 2> "$WORK/trl-$1.log" <<'PYEOF'
import json, os, sys, time
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, TrainerCallback
from trl import DPOConfig, DPOTrainer
sys.path.insert(0, "scripts")
from make_rpo_fixtures import tokenizer
work, precompute, steps, threads = sys.argv[1], sys.argv[2] == "true", int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
rows = [json.loads(l) for l in open(os.path.join(work, "pairs.jsonl"))]
class Timer(TrainerCallback):
    def __init__(self): self.t = []
    def on_step_begin(self, *a, **k): self.t0 = time.perf_counter()
    def on_step_end(self, *a, **k): self.t.append(time.perf_counter() - self.t0)
timer = Timer()
args = DPOConfig(output_dir=os.path.join(work, "trl-out"), per_device_train_batch_size=4, max_steps=steps,
                 learning_rate=1e-4, lr_scheduler_type="constant", optim="adamw_torch", bf16=False,
                 gradient_checkpointing=False, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                 loss_type=["sigmoid", "sft"], loss_weights=[1.0, 10.0], precompute_ref_log_probs=precompute,
                 max_length=1024, dataloader_num_workers=0)
model = AutoModelForCausalLM.from_pretrained(os.path.join(work, "model"), dtype=torch.float32)
peft = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer(),
                     peft_config=peft, callbacks=[timer])
trainer.train()
later = timer.t[1:]
with open(os.path.join(work, f"trl-{sys.argv[2]}.result"), "w") as f:
    json.dump({"pairs_per_second": 4 * len(later) / sum(later)}, f)
PYEOF
    "$PY" -c "import json,sys; d=json.load(open('$WORK/trl-$1.result')); d['peak_rss_mb']=int(open('$WORK/trl-$1.rss').read().split()[-1])/1024; print(json.dumps(d))"
}

echo "bench-rpo: $PAIRS pairs, batch 4, $STEPS steps, $THREADS threads, $(nproc) cores, medllm share_prompt=$SHARE_PROMPT, load $(cut -d" " -f1-3 /proc/loadavg)"
for pre in false true; do
    m=$(run_medllm $pre)
    t=$(run_trl $pre)
    "$PY" - "$pre" "$m" "$t" <<'PYEOF'
import json, sys
pre, m, t = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"precompute_ref={pre:5}  medllm {m['pairs_per_second']:7.2f} pairs/s {m['peak_rss_mb']:7.0f} MB | "
      f"TRL {t['pairs_per_second']:7.2f} pairs/s {t['peak_rss_mb']:7.0f} MB | "
      f"speed x{m['pairs_per_second'] / t['pairs_per_second']:.2f}, memory x{m['peak_rss_mb'] / t['peak_rss_mb']:.2f}")
PYEOF
done
