#!/usr/bin/env bash
# `medllm eval igakuqa --model` at a real shape next to the HF transformers loops a user would write, in the same
# run, on the same random model (scripts/bench_setup.py: configs/models/$SHAPE, default qwen2.5-0.5b, with the
# real vocabulary and tokenizer) and the same real IgakuQA prompts: the 3-shot chat prompts medllm rendered and
# recorded in its predictions.jsonl (standard: 485-783 tokens for 2018; explanation mode longer).
#   HF batch-1: one generate() per question.   HF sorted: the questions sorted by length, generate() on batches
#   of $HF_BATCH (left-padded: the least padding HF batching can have).
# Both greedy, to the model's EOS ids or the mode's token limit (random weights: usually the limit).
#
#   scripts/bench-eval.sh                                # 2018, first 3 questions per section (18), 1 and 2 threads
#   LIMIT=2 MODES=standard THREADS=2 REPEATS=3 scripts/bench-eval.sh
#   EXPL_TOKENS=128 STD_TOKENS=64 HF_BATCH=16 MEDLLM_BATCH=64 scripts/bench-eval.sh
#
# Times are wall times: medllm's whole command (process start and model load included), HF's loop (model load
# excluded). Peak resident memory of each process in MiB. Prints every run, then medians over the repeats.
set -euo pipefail
cd "$(dirname "$0")/.."
MEDLLM=${MEDLLM:-build/medllm}
PY=${PY:-.venv/bin/python}
[[ -x "$MEDLLM" ]] || { echo "bench-eval: $MEDLLM not built" >&2; exit 1; }
"$PY" -c 'import transformers' 2>/dev/null ||
    { echo "bench-eval: $PY has no transformers (pip install -r scripts/requirements-fixtures.txt, or PY=...)" >&2; exit 1; }

"$PY" - "$MEDLLM" <<'PYEOF'
import json, os, sys, tempfile
sys.path.insert(0, "scripts")
import bench_setup as bs

medllm = sys.argv[1]
shape = os.environ.get("SHAPE", "qwen2.5-0.5b")
modes = os.environ.get("MODES", "standard explanation").split()
threads_list = [int(t) for t in os.environ.get("THREADS", "1 2").split()]
limit = int(os.environ.get("LIMIT", "3"))
years = os.environ.get("YEARS", "2018")
tokens = {"standard": int(os.environ.get("STD_TOKENS", "64")), "explanation": int(os.environ.get("EXPL_TOKENS", "128"))}
hf_batch = int(os.environ.get("HF_BATCH", "16"))
medllm_batch = int(os.environ.get("MEDLLM_BATCH", "64"))
repeats = int(os.environ.get("REPEATS", "3"))
model = bs.model_dir(shape)
data = os.path.join(bs.SHARED, "igakuqa_data")
work = tempfile.mkdtemp(prefix="bench-eval.")
print(f"{shape} fp32, IgakuQA {years} --limit {limit}, max new tokens {tokens}, HF sorted batch {hf_batch}, "
      f"medllm --batch-size {medllm_batch}, {repeats} repeats; {bs.load_note()} at start", flush=True)
print(f"{'mode':<11} {'thr':>3} {'rep':>3} | {'medllm s':>8} {'HF b1 s':>8} {'HF sorted s':>11} | {'x b1':>5} "
      f"{'x sorted':>8} | RSS MiB medllm / b1 / sorted | same text b1+sorted/n | load", flush=True)
rows = {}
for threads in threads_list:
    for mode in modes:
        for rep in range(repeats):
            out = os.path.join(work, f"{mode}-{threads}-{rep}")
            m = bs.measure([medllm, "--threads", threads, "eval", "igakuqa", "--model", model, "--data-dir", data,
                            "--years", years, "--limit", limit, "--mode", mode, "--prompt-format", "chat",
                            "--max-new-tokens", tokens["standard"], "--max-new-tokens-explanation",
                            tokens["explanation"], "--batch-size", medllm_batch, "--output", out], threads)
            records = [json.loads(l) for l in open(os.path.join(out, "predictions.jsonl"))]
            prompts = os.path.join(work, f"prompts-{mode}.json")
            json.dump([r["prompt"] for r in records], open(prompts, "w"), ensure_ascii=False)
            expect = os.path.join(work, f"outputs-{mode}.json")
            json.dump([r["raw_output"] for r in records], open(expect, "w"), ensure_ascii=False)
            res = {}
            for loop in ("batch1", "sorted"):
                h = bs.measure([sys.executable, "scripts/bench_hf.py", "eval", model, prompts, "--loop", loop,
                                "--batch", hf_batch, "--max-new-tokens", tokens[mode], "--expect", expect], threads)
                res[loop] = (bs.last_json(h["stdout"]), h["peak_rss_mb"])
            b1, sorted_ = res["batch1"][0]["seconds"], res["sorted"][0]["seconds"]
            agree = f"{res['batch1'][0]['agree']}+{res['sorted'][0]['agree']}/{len(records)}"
            r = rows.setdefault((mode, threads), [])
            r.append((m["seconds"], b1, sorted_, m["peak_rss_mb"], res["batch1"][1], res["sorted"][1]))
            print(f"{mode:<11} {threads:>3} {rep:>3} | {m['seconds']:8.1f} {b1:8.1f} {sorted_:11.1f} | "
                  f"{b1 / m['seconds']:4.2f}x {sorted_ / m['seconds']:7.2f}x | {m['peak_rss_mb']:.0f} / "
                  f"{res['batch1'][1]:.0f} / {res['sorted'][1]:.0f} | {agree} | {os.getloadavg()[0]:.1f}", flush=True)
print(f"\nmedians over {repeats} repeats ({bs.load_note()} at end): HF time / medllm time")
for (mode, threads), r in rows.items():
    print(f"{mode:<11} threads {threads}: medllm {bs.median([x[0] for x in r]):.1f} s, HF batch-1 "
          f"{bs.median([x[1] for x in r]):.1f} s ({bs.median([x[1] / x[0] for x in r]):.2f}x), HF sorted batched "
          f"{bs.median([x[2] for x in r]):.1f} s ({bs.median([x[2] / x[0] for x in r]):.2f}x); peak RSS MiB medllm "
          f"{bs.median([x[3] for x in r]):.0f}, HF {bs.median([x[4] for x in r]):.0f} / {bs.median([x[5] for x in r]):.0f}")
PYEOF
