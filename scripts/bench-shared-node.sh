#!/usr/bin/env bash
# LoRA CPT steps on a machine shared with other busy processes, medllm against transformers + PEFT, with 2 threads,
# 1 thread, and 2 threads under OMP_WAIT_POLICY=PASSIVE (docs/distributed.md, "Shared machines"):
#   PYTHON=/path/to/venv-with-transformers-and-peft/bin/python LOAD=4 REPEATS=2 scripts/bench-shared-node.sh
# LOAD busy processes (each a shell loop in its own session, so the scheduler gives each an equal share) run while
# the cases do; LOAD=0 measures whatever the machine is already doing. Each case is one whole process: medllm cpt
# with training.max_steps 12, batch 8 x 512 tokens, LoRA r 32 on the quickstart model; the PyTorch side is
# scripts/bench_shared_node_reference.py, the same steps in a plain loop. Prints wall seconds and the load average.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
build=${MEDLLM_BUILD_DIR:-build}
load=${LOAD:-4} repeats=${REPEATS:-2}
work=$(mktemp -d /tmp/bench-shared.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -- -"$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
cat >"$work/cpt.yaml" <<YAML
model: {path: configs/quickstart/model}
data: {sources: [{path: configs/quickstart/corpus/texts.jsonl}], seq_len: 512}
eval_guard: {enabled: false}
lora: {quantize_base: false, r: 32, alpha: 64, dropout: 0.0}
training: {max_steps: 12, batch_size: 8, grad_accum: 1, logging_steps: 2, device: cpu, eval_on_start: false, save_steps: 1000}
YAML
for ((i = 0; i < load; i++)); do
  setsid sh -c 'while :; do :; done' &
  pids+=($!)
done
sleep 2
seconds() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
for rep in $(seq 1 "$repeats"); do
  for case in "OMP_NUM_THREADS=2" "OMP_NUM_THREADS=1" "OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE"; do
    rm -rf "$work/out"
    m=$(seconds env $case "$build/medllm" cpt --config "$work/cpt.yaml" --set output="$work/out" --resume never)
    t=$(seconds env $case "$python" scripts/bench_shared_node_reference.py)
    printf '%-42s medllm %6.1f s   transformers+PEFT %6.1f s   load %s\n' "[$case]" "$m" "$t" \
      "$(cut -d' ' -f1 /proc/loadavg)"
  done
done
