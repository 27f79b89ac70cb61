#!/usr/bin/env bash
# Data-parallel training speed on CPU: `medllm cpt` with 1 and 2 Gloo processes, next to PyTorch DDP (Gloo) + PEFT
# on the same model and settings, in the same run.
#   scripts/bench-dist.sh                        # STEPS=8 WARM=2 THREADS=1
#   STEPS=12 THREADS=1 scripts/bench-dist.sh
#   OVERLAP_ONLY=1 REPEATS=3 BUCKET_MB=0.25 scripts/bench-dist.sh   # medllm rows and overlap off/on only
# Model: a random Qwen2 of 4 layers x 256 hidden (4 heads, 2 KV heads, MLP 704, vocabulary 512), seq 256, batch 4,
# grad_accum 2 per process (weak scaling: each process does the same work, so 2 processes make one step cover
# twice the rows, as torchrun users scale), LoRA r 16 / alpha 32 / dropout 0.05 on all seven projections, AdamW,
# no activation checkpointing, fp32. Every process runs THREADS intra-op threads (1 = one core per process).
# Measured: tokens/s (all processes together) over the steps after WARM, and for medllm the seconds per step in
# the gradient all-reduce (metrics.jsonl: allreduce_seconds_per_step, the slowest rank's). Scaling efficiency =
# tokens/s with 2 processes / (2 x tokens/s with 1). Needs MEDLLM_BIN (default build/medllm) and .venv with
# transformers + peft (scripts/requirements-fixtures.txt).
# Then sharded generation: `medllm eval igakuqa --mode both` (greedy, EVAL_TOKENS new tokens per answer, batch 8) on
# the first EVAL_PER_SECTION questions of each 2018 section (../shared/igakuqa_data) with the same random model, 1
# process vs 2 processes sharing the questions: questions/s of the whole run (model load included), and whether
# the two runs wrote the same predictions.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${MEDLLM_BIN:-build/medllm}
python=${PYTHON:-.venv/bin/python}
steps=${STEPS:-8}
warm=${WARM:-2}
threads=${THREADS:-1}
work=${MEDLLM_BENCH_DIR:-$(mktemp -d /tmp/bench-dist.XXXXXX)}
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
[ -x "$bin" ] || { echo "bench-dist: missing $bin (scripts/setup.sh)" >&2; exit 1; }
[ "$steps" -gt "$warm" ] || { echo "bench-dist: STEPS must exceed WARM" >&2; exit 2; }
echo "cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg); steps $steps (first $warm not timed); $threads thread(s) per process"

"$python" - "$work" <<'PY' 2>&1 | grep -v "gemm_4bit\|Loading weights" || true
import json, random, sys
from pathlib import Path
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
work = Path(sys.argv[1])
torch.manual_seed(0)
cfg = Qwen2Config(vocab_size=512, hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, rope_theta=1e6, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, bos_token_id=256, eos_token_id=256)
Qwen2ForCausalLM(cfg).save_pretrained(work / "model", safe_serialization=True)
gc = work / "model" / "generation_config.json"
if gc.exists():
    gc.unlink()
rng = random.Random(7)
words = ["fever", "cough", "patient", "treated", "dose", "renal", "cardiac", "発熱", "咳", "受診", "投与", "腎機能"]
with open(work / "corpus.jsonl", "w", encoding="utf-8") as f:
    for _ in range(600):
        f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(50, 400)))},
                           ensure_ascii=False) + "\n")
PY

cat > "$work/cpt.yaml" <<YAML
model: {path: $work/model, tokenizer: tests/fixtures/train/byte-tokenizer}
output: $work/run
data:
  sources: [{path: $work/corpus.jsonl}]
  eos_token: <|endoftext|>
  seq_len: 256
  packing: concat
  cache_dir: $work/cache
  validation: {fraction: 0}
eval_guard: {enabled: false}
lora: {quantize_base: false, r: 16, alpha: 32, dropout: 0.05}
optim: {lr: 1.0e-4}
schedule: {name: constant, warmup_steps: 0}
training: {max_steps: $steps, batch_size: 4, grad_accum: 2, device: cpu, logging_steps: 1, save_steps: 1000000,
           activation_checkpointing: false, eval_on_start: false}
YAML

metrics_summary() {  # tokens/s after WARM and the mean all-reduce seconds per step, from metrics.jsonl
    "$python" - "$1" "$warm" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l and '"tokens_per_second"' in l]
warm = int(sys.argv[2])
prev = {r["step"]: r["tokens_seen"] for r in recs}
tok = sec = ar = 0.0
n = 0
for r in recs:
    if r["step"] <= warm:
        continue
    t = r["tokens_seen"] - prev.get(r["step"] - 1, 0)
    tok += t
    sec += t / r["tokens_per_second"]
    ar += r.get("allreduce_seconds_per_step", 0.0)
    n += 1
print(f"{tok / sec:.0f} {1000 * ar / max(n, 1):.1f}")
PY
}

run_medllm() {  # nproc [cpt flags...]
    local n=$1 port
    shift
    rm -rf "$work/run"
    port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    local pids=()
    for ((r = 0; r < n; r++)); do
        RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r LOCAL_WORLD_SIZE=$n MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
            "$bin" --threads "$threads" cpt --config "$work/cpt.yaml" --resume never "$@" \
            >"$work/medllm-$n-$r.log" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || { echo "bench-dist: medllm failed:"; tail -5 "$work"/medllm-$n-*.log; exit 1; }; done
    metrics_summary "$work/run/metrics.jsonl"
}

cat > "$work/ddp.py" <<'PY'
# PyTorch DDP (Gloo) + PEFT LoRA on the same model and shapes: the reference for scaling.
import os, sys, time
import torch, torch.distributed as dist
from transformers import Qwen2ForCausalLM
from peft import LoraConfig, get_peft_model
work, steps, warm, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
if world > 1:
    dist.init_process_group("gloo")
torch.manual_seed(0)
model = Qwen2ForCausalLM.from_pretrained(work + "/model", torch_dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=[
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
model.train()
ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
g = torch.Generator().manual_seed(rank)
batch, seq, accum = 4, 256, 2
times = []
for step in range(steps):
    t0 = time.perf_counter()
    for m in range(accum):
        ids = torch.randint(0, 512, (batch, seq), generator=g)
        ctx = ddp.no_sync() if (world > 1 and m < accum - 1) else torch.enable_grad()
        with ctx:
            loss = ddp(input_ids=ids, labels=ids).loss / accum
            loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t0)
if world > 1:
    t = torch.tensor([sum(times[warm:])])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    total = t.item()
    dist.destroy_process_group()
else:
    total = sum(times[warm:])
if rank == 0:
    print(f"{world * batch * seq * accum * (steps - warm) / total:.0f}")
PY

run_ddp() {  # nproc
    local n=$1
    if [ "$n" -eq 1 ]; then
        "$python" "$work/ddp.py" "$work" "$steps" "$warm" "$threads" 2>/dev/null | tail -1
    else
        local port
        port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        "$python" -m torch.distributed.run --nproc-per-node "$n" --master-addr 127.0.0.1 --master-port "$port" \
            "$work/ddp.py" "$work" "$steps" "$warm" "$threads" 2>/dev/null | tail -1
    fi
}

read -r m1 _ < <(run_medllm 1)
read -r m2 ar2 < <(run_medllm 2)
eff() { "$python" -c "print(f'{100 * $2 / (2 * $1):.0f}%')"; }
printf '%-28s %12s %12s %10s %16s\n' "" "1 process" "2 processes" "scaling" "all-reduce/step"
printf '%-28s %12s %12s %10s %13s ms\n' "medllm cpt (c10d Gloo)" "$m1 tok/s" "$m2 tok/s" "$(eff "$m1" "$m2")" "$ar2"
# The gradient all-reduce inside the last backward (training.overlap_allreduce) with BUCKET_MB buckets (the adapter
# gradients are 1.2 MB here: the default 25 MB would make one bucket, which can start only when backward ends), off
# and on alternately REPEATS times; all-reduce/step is then what backward did not hide. OVERLAP_ONLY=1 stops here.
bucket_mb=${BUCKET_MB:-0.25}
for ((i = 0; i < ${REPEATS:-1}; i++)); do
    for ov in false true; do
        read -r t a < <(run_medllm 2 --set training.overlap_allreduce=$ov --set training.allreduce_bucket_mb="$bucket_mb")
        printf '%-28s %12s %12s %10s %13s ms\n' "  overlap $ov, $bucket_mb MB" "-" "$t tok/s" "$(eff "$m1" "$t")" "$a"
    done
done
[ -n "${OVERLAP_ONLY:-}" ] && exit 0
d1=$(run_ddp 1)
d2=$(run_ddp 2)
printf '%-28s %12s %12s %10s %16s\n' "PyTorch DDP (Gloo) + PEFT" "$d1 tok/s" "$d2 tok/s" "$(eff "$d1" "$d2")" "-"

# ---------------------------------------------------------------- sharded generation (eval igakuqa)
per_section=${EVAL_PER_SECTION:-10}
eval_tokens=${EVAL_TOKENS:-16}
shared=${MEDLLM_SHARED_DIR:-../shared}
mkdir -p "$work/igakuqa/data/2018"
for f in "$shared"/igakuqa_data/data/2018/112-?.jsonl "$shared"/igakuqa_data/data/2018/112-?_metadata.jsonl; do
    head -n "$per_section" "$f" >"$work/igakuqa/data/2018/$(basename "$f")"
done
# The same weights with the byte tokenizer and room for the 3-shot Japanese prompts (RoPE does not depend on it).
cp -r "$work/model" "$work/model-eval"
cp tests/fixtures/train/byte-tokenizer/* "$work/model-eval/"
"$python" - "$work/model-eval/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["max_position_embeddings"] = 16384
json.dump(c, open(sys.argv[1], "w"))
PY
run_eval() {  # nproc -> seconds
    local n=$1 port t0 t1
    rm -rf "$work/eval-$n"
    port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    t0=$(date +%s.%N)
    local pids=()
    for ((r = 0; r < n; r++)); do
        RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r LOCAL_WORLD_SIZE=$n MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
            "$bin" --threads "$threads" eval igakuqa --data-dir "$work/igakuqa" --model "$work/model-eval" --years 2018 \
            --prompt-format base --prompt-file "$shared/igakuqa_data/scripts/prompts/prompt.jsonl" --mode both \
            --max-new-tokens "$eval_tokens" --max-new-tokens-explanation "$eval_tokens" --batch-size 8 \
            --output "$work/eval-$n" >"$work/eval-$n-$r.log" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || { echo "bench-dist: eval failed:"; tail -5 "$work"/eval-$n-*.log; exit 1; }; done
    t1=$(date +%s.%N)
    "$python" -c "print(f'{$t1 - $t0:.1f}')"
}
e1=$(run_eval 1)
e2=$(run_eval 2)
nq=$((2 * 6 * per_section))
same=$(cmp -s "$work/eval-1/predictions.jsonl" "$work/eval-2/predictions.jsonl" && echo "identical" || echo "DIFFERENT")
qps() { "$python" -c "print(f'{$nq / $1:.2f}')"; }
printf '%-28s %12s %12s %10s %16s\n' "medllm eval igakuqa (both)" "$(qps "$e1") q/s" "$(qps "$e2") q/s" \
    "$("$python" -c "print(f'{100 * $e1 / (2 * $e2):.0f}%')")" "$same"
echo "($nq answers; ${e1} s vs ${e2} s wall, model load included; last column: predictions.jsonl of 2 vs 1 process)"
