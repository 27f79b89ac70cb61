#!/usr/bin/env bash
# Kill test for `medllm cpt`: SIGKILLs (and once SIGTERMs) a tiny training run at random moments, resumes it each
# time, and checks that the final adapter is byte-identical to an uninterrupted run's.
#   scripts/kill-test-cpt.sh [trials=3] [build dir=build]
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-3}
bin=${2:-build}/medllm
work=$(mktemp -d /tmp/medllm_kill.XXXXXX)
trap 'rm -rf "$work"' EXIT
# A private copy of the corpus: the tiny config reads README.md, which may change while the test runs.
cp README.md "$work/corpus.md"
sets=(--set training.max_steps=12 --set training.save_steps=2 --set training.logging_steps=1
      --set "data.sources=[{path: $work/corpus.md, format: lines}]")
run() { "$bin" cpt --config configs/tiny/cpt.yaml "${sets[@]}" --set "output=$1" >/dev/null 2>>"$work/log"; }

start=$(date +%s)
run "$work/straight"
straight_s=$(( $(date +%s) - start ))
echo "uninterrupted run: ${straight_s} s"
for t in $(seq 1 "$trials"); do
    out="$work/trial$t"
    kills=0
    while true; do
        "$bin" cpt --config configs/tiny/cpt.yaml "${sets[@]}" --set "output=$out" >/dev/null 2>>"$work/log" &
        pid=$!
        # a random moment within the run (in tenths of a second)
        delay=$(( RANDOM % (straight_s * 10 + 10) ))
        sig=KILL
        [ "$t" -eq 1 ] && [ "$kills" -eq 0 ] && sig=TERM
        for ((i = 0; i < delay; i++)); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
        if kill -0 $pid 2>/dev/null; then
            kill -$sig $pid 2>/dev/null || true
            kills=$((kills + 1))
        fi
        if wait $pid 2>/dev/null && [ -f "$out/summary.json" ]; then break; fi
        [ "$kills" -gt 30 ] && { echo "trial $t: no progress after 30 kills"; exit 1; }
    done
    if cmp -s "$work/straight/adapter/adapter_model.safetensors" "$out/adapter/adapter_model.safetensors"; then
        echo "trial $t: $kills interruptions (first one SIG$([ "$t" -eq 1 ] && echo TERM || echo KILL)), final adapter identical"
    else
        echo "trial $t: final adapter DIFFERS"; exit 1
    fi
done
echo "kill test passed: $trials trials"
