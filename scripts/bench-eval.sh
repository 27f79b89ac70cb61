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
# Times are wall and CPU (user + system, all threads) seconds: medllm's whole command (process start and model load
# included), HF's loop (model load excluded). CPU time is the steadier figure where other processes share the
# cores. Peak resident memory of each process in MiB. Prints every run, then medians over the repeats.
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
print(f"{'mode':<11} {'thr':>3} {'rep':>3} | seconds, wall (CPU): {'medllm':<14} {'HF batch-1':<14} {'HF sorted':<14} | "
      f"HF / medllm: {'b1':<12} {'sorted':<12} | RSS MiB medllm/b1/sorted | same text b1+sorted/n | load", flush=True)
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
            run = {"medllm": {"seconds": m["seconds"], "cpu_seconds": m["cpu_seconds"], "rss": m["peak_rss_mb"]}}
            for loop in ("batch1", "sorted"):
                h = bs.measure([sys.executable, "scripts/bench_hf.py", "eval", model, prompts, "--loop", loop,
                                "--batch", hf_batch, "--max-new-tokens", tokens[mode], "--expect", expect], threads)
                run[loop] = dict(bs.last_json(h["stdout"]), rss=h["peak_rss_mb"])
            rows.setdefault((mode, threads), []).append(run)
            times = " ".join(f"{run[k]['seconds']:6.1f} ({run[k]['cpu_seconds']:5.1f})" for k in ("medllm", "batch1", "sorted"))
            ratio = " ".join(f"{run[k]['seconds'] / m['seconds']:4.2f}x ({run[k]['cpu_seconds'] / m['cpu_seconds']:4.2f}x)"
                             for k in ("batch1", "sorted"))
            print(f"{mode:<11} {threads:>3} {rep:>3} | {times} | {ratio} | {m['peak_rss_mb']:.0f} / "
                  f"{run['batch1']['rss']:.0f} / {run['sorted']['rss']:.0f} | {run['batch1']['agree']}+"
                  f"{run['sorted']['agree']}/{len(records)} | {os.getloadavg()[0]:.1f}", flush=True)
print(f"\nmedians over {repeats} repeats ({bs.load_note()} at end): HF time / medllm time, wall and CPU")
for (mode, threads), r in rows.items():
    med = lambda f: bs.median([f(x) for x in r])
    parts = []
    for loop, name in (("batch1", "HF batch-1"), ("sorted", f"HF sorted batches of {hf_batch}")):
        parts.append(f"{name} {med(lambda x: x[loop]['seconds']):.1f} s "
                     f"({med(lambda x: x[loop]['seconds'] / x['medllm']['seconds']):.2f}x wall, "
                     f"{med(lambda x: x[loop]['cpu_seconds'] / x['medllm']['cpu_seconds']):.2f}x CPU)")
    print(f"{mode:<11} threads {threads}: medllm {med(lambda x: x['medllm']['seconds']):.1f} s; " + "; ".join(parts) +
          f"; peak RSS MiB medllm {med(lambda x: x['medllm']['rss']):.0f}, HF {med(lambda x: x['batch1']['rss']):.0f} / "
          f"{med(lambda x: x['sorted']['rss']):.0f}")
PYEOF
