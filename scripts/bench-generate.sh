#!/usr/bin/env bash
# Generation throughput at a real shape: medllm's engine (build/bench_generate) next to HF transformers' generate()
# (scripts/bench_hf.py) on the same random model and prompts, in the same run, each in its own process (so each
# has its own peak memory), interleaved per repeat so both see the same machine load.
#
# Model: scripts/bench_setup.py's random Qwen2 of configs/models/$SHAPE (default qwen2.5-0.5b: 24 layers, hidden
# 896, GQA 14/2, vocabulary 151,936) with the real Qwen2.5 tokenizer. Prompts: the first $PROMPTS IgakuQA 2018
# questions (first of each section, then the second ...) rendered as `medllm eval igakuqa` renders them in the chat
# format ($MODE: standard 3-shot prompts of 485-783 tokens, or explanation), as token ids. At batch B both sides run
# them as consecutive calls of B prompts (HF left-pads each call; medllm packs them and shares their common
# prefix through its prefix cache, emptied before each measurement).
#
#   scripts/bench-generate.sh                                   # fp32 and bf16, 1 and 2 threads, batch 1 and 8
#   DTYPES=fp32 THREADS=2 BATCHES="1 8" PROMPTS=8 NEW_TOKENS=16 REPEATS=3 scripts/bench-generate.sh
#   NO_PREFIX_CACHE=1 scripts/bench-generate.sh                 # medllm without the prefix cache
#   scripts/bench-generate.sh --gpu                             # CUDA: qwen2.5-7b in bf16, batch 1, 8 and 64
#
# prefill tok/s = real prompt tokens / prefill time (HF: until each call's first logits; medllm: its prefill steps,
# in which the first prompts' decoding rows ride along); decode tok/s = tokens after the first / the rest (medllm:
# tokens of its decode-only steps / their time). Prints every measurement, then the medians over the repeats with
# medllm / HF ratios and peak resident memory (MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-build/bench_generate}
PY=${PY:-.venv/bin/python}
[[ -x "$BENCH" ]] || { echo "bench-generate: $BENCH not built (cmake --build build --target bench_generate)" >&2; exit 1; }
"$PY" -c 'import transformers' 2>/dev/null ||
    { echo "bench-generate: $PY has no transformers (pip install -r scripts/requirements-fixtures.txt, or PY=...)" >&2; exit 1; }

DEVICE=cpu
if [[ "${1:-}" == "--gpu" ]]; then
    DEVICE=cuda
    : "${SHAPE:=qwen2.5-7b}" "${DTYPES:=bf16}" "${THREADS:=$(nproc)}" "${BATCHES:=1 8 64}" "${PROMPTS:=64}"
    export SHAPE DTYPES THREADS BATCHES PROMPTS
fi
[[ -x build/bench_igakuqa_prompts ]] ||
    { echo "bench-generate: build/bench_igakuqa_prompts not built (cmake --build build --target bench_igakuqa_prompts)" >&2; exit 1; }

"$PY" - "$BENCH" "$DEVICE" <<'PYEOF'
import json, os, sys, tempfile
sys.path.insert(0, "scripts")
import bench_setup as bs

bench, device = sys.argv[1], sys.argv[2]
shape = os.environ.get("SHAPE", "qwen2.5-0.5b")
mode = os.environ.get("MODE", "standard")
dtypes = os.environ.get("DTYPES", "fp32 bf16").split()
threads_list = [int(t) for t in os.environ.get("THREADS", "1 2").split()]
batches = [int(b) for b in os.environ.get("BATCHES", "1 8").split()]
n_prompts = int(os.environ.get("PROMPTS", "8"))
G = int(os.environ.get("NEW_TOKENS", "16"))
repeats = int(os.environ.get("REPEATS", "3"))
env = {"PREFIX_CACHE": "0"} if os.environ.get("NO_PREFIX_CACHE") == "1" else {}

model = bs.model_dir(shape, "bf16" if device == "cuda" else "fp32")
# The first of each section, then the second ...: --limit takes them section by section; take round-robin.
by_section = {}
for p in bs.igakuqa_prompts(mode, "2018", limit=(n_prompts + 5) // 6, folder=model):
    by_section.setdefault(p["id"][3], []).append(p["prompt_ids"])
prompt_ids = [by_section[s][k] for k in range(max(map(len, by_section.values()))) for s in sorted(by_section)
              if k < len(by_section[s])][:n_prompts]
work = tempfile.mkdtemp(prefix="bench-generate.")
path = os.path.join(work, "prompts.jsonl")
lengths = [len(ids) for ids in prompt_ids]
with open(path, "w") as f:
    for ids in prompt_ids:
        f.write(json.dumps({"prompt_ids": ids}) + "\n")
print(f"{shape} on {device}, {len(prompt_ids)} IgakuQA 2018 {mode} prompts of {min(lengths)}-{max(lengths)} tokens "
      f"({sum(lengths)} in all), {G} new tokens, batches {batches}, {repeats} repeats"
      f"{', medllm without prefix cache' if env else ''}; {bs.load_note()} at start", flush=True)
# Each measurement: tok/s from wall time and from process CPU time (steadier where other processes share the cores).
KEYS = ("prefill", "decode", "prefill_cpu", "decode_cpu")
print(f"{'dtype':<5} {'thr':>3} {'batch':>5} {'rep':>3} | tok/s medllm / HF (ratio): {'prefill':<24} {'decode':<22} "
      f"{'prefill, CPU time':<24} {'decode, CPU time':<22} | RSS MiB medllm/HF | load", flush=True)
rows = {}
for threads in threads_list:
    for dtype in dtypes:
        for rep in range(repeats):
            for B in batches:
                h = bs.measure([sys.executable, "scripts/bench_hf.py", "generate", model, path, "--batch", B,
                                "--new-tokens", G, "--dtype", dtype, "--device", device], threads)
                m = bs.measure([bench, model, path, B, G, threads, device, dtype], threads, env)
                hr, mr = bs.last_json(h["stdout"]), bs.last_json(m["stdout"])
                rows.setdefault((dtype, threads, B), []).append((mr, hr, m["peak_rss_mb"], h["peak_rss_mb"]))
                cells = " ".join(f"{mr[k]:7.1f} / {hr[k]:6.1f} ({mr[k] / hr[k]:4.2f}x)" for k in KEYS)
                print(f"{dtype:<5} {threads:>3} {B:>5} {rep:>3} | {cells} | {m['peak_rss_mb']:.0f}/{h['peak_rss_mb']:.0f} | "
                      f"{os.getloadavg()[0]:.1f}  (cached {mr['cached_prompt_tokens']} of {mr['prompt_tokens']})",
                      flush=True)
print(f"\nmedians over {repeats} repeats of medllm / HF ({bs.load_note()} at end):")
print(f"{'dtype':<5} {'thr':>3} {'batch':>5} | {'prefill':>8} {'decode':>8} {'prefill CPU':>12} {'decode CPU':>11} | "
      f"peak RSS MiB medllm / HF")
for (dtype, threads, B), r in rows.items():
    ratios = " ".join(f"{bs.median([mr[k] / hr[k] for mr, hr, _, _ in r]):{w}.2f}x"
                      for k, w in zip(KEYS, (7, 7, 11, 10)))
    print(f"{dtype:<5} {threads:>3} {B:>5} | {ratios} | {bs.median([x[2] for x in r]):.0f} / "
          f"{bs.median([x[3] for x in r]):.0f}")
PYEOF
