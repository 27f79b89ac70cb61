#!/usr/bin/env bash
# Tokenizer throughput: medllm vs Hugging Face `tokenizers` (Rust, from PyPI) on the same corpus, same run.
# The corpus is the IgakuQA question texts and choices (Japanese, plus the English translations), one document
# per line, repeated to about MB megabytes. Both sides are timed on encoding only (files read beforehand), single
# threaded and with all cores (medllm: encode_batch threads; HF: encode_batch with RAYON_NUM_THREADS).
#   scripts/bench-tokenizer.sh [MB]        (default 8)
# Needs build/medllm (scripts/setup.sh) and a Python with tokenizers: PYTHON=... or .venv with
# scripts/requirements-fixtures.txt installed.
set -euo pipefail
cd "$(dirname "$0")/.."
mb=${1:-8}
bin=${MEDLLM_BIN:-build/medllm}
python=${PYTHON:-.venv/bin/python}
model=${MEDLLM_TOKENIZER_DIR:-../shared/qwen_tokenizer}
cores=$(nproc)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

[ -x "$bin" ] || { echo "missing $bin: run scripts/setup.sh" >&2; exit 1; }
"$python" -c 'import tokenizers' 2>/dev/null ||
    { echo "$python lacks tokenizers: $python -m pip install -r scripts/requirements-fixtures.txt" >&2; exit 1; }

"$python" - "$mb" "$work/corpus.txt" <<'PY'
import json, sys
from pathlib import Path
mb, out = float(sys.argv[1]), Path(sys.argv[2])
docs = []
for path in sorted(Path("../shared/igakuqa_data/data").glob("*/*.jsonl")):
    if "_metadata" in path.name:
        continue
    for line in path.read_text(encoding="utf-8").splitlines():
        q = json.loads(line)
        text = q.get("problem_text", "") + " " + " ".join(q.get("choices", []))
        docs.append(" ".join(text.split("\n")))
base = "\n".join(docs) + "\n"
reps = max(1, int(mb * 1e6 / len(base.encode("utf-8")) + 0.5))
out.write_text(base * reps, encoding="utf-8")
PY
bytes=$(stat -c %s "$work/corpus.txt")
echo "corpus: $(wc -l < "$work/corpus.txt") documents, $bytes bytes (IgakuQA repeated); $cores cores"

medllm_run() {  # jobs -> "MB/s tokens/s tokens"
    "$bin" tokenize --model "$model" -i "$work/corpus.txt" -o "$work/medllm_$1.jsonl" --stats -j "$1" 2>"$work/stats" >/dev/null
    awk '/^MB_per_s/{m=$2} /^tokens_per_s/{t=$2} /^tokens /{n=$2} END{print m, t, n}' "$work/stats"
}
hf_run() {
    RAYON_NUM_THREADS=$1 TOKENIZERS_PARALLELISM=true "$python" - "$work/corpus.txt" <<'PY'
import sys, time
sys.path.insert(0, "scripts")
from make_tokenizer_fixtures import build_tokenizer
tok = build_tokenizer()
docs = open(sys.argv[1], encoding="utf-8").read().split("\n")[:-1]
tok.encode_batch(docs[:2000], add_special_tokens=False)  # warm up the thread pool and cache
best = None
for _ in range(2):
    t0 = time.perf_counter()
    enc = tok.encode_batch(docs, add_special_tokens=False)
    dt = time.perf_counter() - t0
    best = dt if best is None else min(best, dt)
n = sum(len(e.ids) for e in enc)
size = sum(len(d.encode("utf-8")) for d in docs)
print(f"{size / 1e6 / best:.2f} {n / best:.0f} {n}")
PY
}

read -r m1 mt1 mn1 < <(medllm_run 1)
read -r mA mtA mnA < <(medllm_run 0)
read -r h1 ht1 hn1 < <(hf_run 1)
read -r hA htA hnA < <(hf_run "$cores")
[ "$mn1" = "$hn1" ] || echo "WARNING: token counts differ: medllm $mn1, HF $hn1" >&2

printf '\n%-22s %12s %14s %12s %14s %8s\n' "" "medllm MB/s" "medllm tok/s" "HF MB/s" "HF tok/s" "ratio"
printf '%-22s %12s %14s %12s %14s %7.2fx\n' "1 thread" "$m1" "$mt1" "$h1" "$ht1" "$(awk -v a="$m1" -v b="$h1" 'BEGIN{print a/b}')"
printf '%-22s %12s %14s %12s %14s %7.2fx\n' "all cores ($cores)" "$mA" "$mtA" "$hA" "$htA" "$(awk -v a="$mA" -v b="$hA" 'BEGIN{print a/b}')"
echo "tokens: $mn1 (medllm) vs $hn1 (HF)"
