#!/usr/bin/env bash
# Corpus cache throughput: `medllm prepare-corpus` vs Hugging Face `tokenizers` encode_batch writing the same
# uint32 token array (numpy), same corpus, same run; plus medllm's peak RSS and the contamination guard's cost.
# The corpus is synthetic JSONL generated from the IgakuQA texts with random perturbation (questions mixed into
# documents of random length, characters and numbers changed), so it is not one repeated line.
#   scripts/bench-corpus.sh [MB ...]        (default: 100 1000)
#   HF_MAX_MB=100 scripts/bench-corpus.sh 100 1000   (HF only up to 100 MB: at ~1 MB/s on a loaded 2-core VM the
#                                                     1 GB HF run alone takes ~20 min; medllm runs at every size)
#   GUARD=0 ...                                       (skip the guard-cost build)
# Peak RSS is /usr/bin/time -v's "Maximum resident set size" of the building process. With two or more sizes the
# last line compares medllm's peak RSS at the largest size with the smallest (target: <= 1.5x: memory must not grow with the corpus).
# Needs build/medllm (MEDLLM_BIN=...) and a Python with tokenizers + numpy (.venv, scripts/requirements-fixtures.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("${@:-100 1000}")
[ $# -eq 0 ] && sizes=(100 1000)
bin=${MEDLLM_BIN:-build/medllm}
python=${PYTHON:-.venv/bin/python}
model=${MEDLLM_TOKENIZER_DIR:-../shared/qwen_tokenizer}
work=${MEDLLM_BENCH_DIR:-$(mktemp -d)}
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
[ -x "$bin" ] || { echo "missing $bin: run scripts/setup.sh" >&2; exit 1; }
hf_max_mb=${HF_MAX_MB:-1000000}
guard_on=${GUARD:-1}
echo "cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg); work: $work"
rss_list=()

for mb in "${sizes[@]}"; do
    corpus="$work/corpus_${mb}.jsonl"
    "$python" - "$mb" "$corpus" <<'PY'
import json, random, sys
from pathlib import Path
mb, out = float(sys.argv[1]), Path(sys.argv[2])
rng = random.Random(1234)
texts = []
for path in sorted(Path("../shared/igakuqa_data/data").glob("*/*.jsonl")):
    if "_metadata" in path.name or "_translate" in path.name:
        continue
    for line in path.read_text(encoding="utf-8").splitlines():
        q = json.loads(line)
        texts.append(q["problem_text"] + "\n" + "\n".join(q.get("choices", [])))
kana = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわん"
def perturb(t):
    cs = list(t)
    for _ in range(max(1, len(cs) // 15)):
        i = rng.randrange(len(cs))
        cs[i] = rng.choice(kana) if rng.random() < 0.7 else str(rng.randrange(10))
    return "".join(cs)
target = int(mb * 1e6)
written = 0
with out.open("w", encoding="utf-8") as f:
    while written < target:
        doc = "\n\n".join(perturb(rng.choice(texts)) for _ in range(rng.randint(1, 12)))
        line = json.dumps({"text": doc}, ensure_ascii=False) + "\n"
        f.write(line)
        written += len(line.encode("utf-8"))
PY
    bytes=$(stat -c %s "$corpus")
    docs=$(wc -l < "$corpus")
    cat > "$work/cpt.yaml" <<YAML
model: {path: $model}
output: $work/run
data:
  sources: [{path: $corpus}]
  eos_token: '<|endoftext|>'
  cache_dir: $work/cache
  validation: {fraction: 0.01}
eval_guard:
  enabled: false
  igakuqa_dir: ../shared/igakuqa_data
  action: warn
YAML
    /usr/bin/time -v -o "$work/time.txt" "$bin" --log-level warn prepare-corpus --config "$work/cpt.yaml" --force \
        > "$work/summary.json"
    rss_mb=$(( $(sed -n 's/^\s*Maximum resident set size (kbytes): //p' "$work/time.txt") / 1024 ))
    wall=$(sed -n 's/^\s*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time.txt")
    wall="$wall, CPU $(sed -n 's/^\s*Percent of CPU this job got: //p' "$work/time.txt") of one core"
    rss_list+=("$mb:$rss_mb")
    medllm_mbs=$("$python" -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"{s['input_bytes']/1e6/s['build_seconds']:.2f}\")" "$work/summary.json")
    tokens=$("$python" -c "import json,sys; print(json.load(open(sys.argv[1]))['tokens'])" "$work/summary.json")
    # Reuse: the second run reads no corpus.
    t0=$(date +%s.%N); "$bin" --log-level warn prepare-corpus --config "$work/cpt.yaml" > /dev/null; t1=$(date +%s.%N)
    reuse_s=$(echo "$t1 - $t0" | bc)
    # The guard's cost: the same build with the guard on (warn: every document checked, none refused).
    guard="not run"
    if [ "$guard_on" = 1 ]; then
        sed -i 's/enabled: false/enabled: true/' "$work/cpt.yaml"
        "$bin" --log-level warn prepare-corpus --config "$work/cpt.yaml" --force > "$work/summary_guard.json"
        guard=$("$python" -c "import json,sys; s=json.load(open(sys.argv[1])); g=s['guard']; print(f\"{(s['documents']+g['dropped'])/g['seconds']:.0f} docs/s ({g['flagged']} flagged)\")" "$work/summary_guard.json")
    fi
    rm -rf "$work/cache"
    if [ "${mb%.*}" -gt "$hf_max_mb" ]; then
        echo "corpus ${mb} MB ($bytes bytes, $docs documents): medllm $medllm_mbs MB/s (wall $wall), peak RSS $rss_mb MB," \
             "$tokens tokens; HF skipped (HF_MAX_MB=$hf_max_mb); reuse ${reuse_s} s; guard $guard"
        rm -f "$corpus"
        continue
    fi
    hf=$(TOKENIZERS_PARALLELISM=true "$python" - "$corpus" "$work/hf_tokens.u32" <<'PY'
import json, resource, sys, time
import numpy as np
sys.path.insert(0, "scripts")
from make_tokenizer_fixtures import build_tokenizer
tok = build_tokenizer()
eos = tok.token_to_id("<|endoftext|>")
t0 = time.perf_counter()
n_bytes = 0
with open(sys.argv[1], encoding="utf-8") as f, open(sys.argv[2], "wb") as out:
    batch = []
    def flush():
        for e in tok.encode_batch(batch, add_special_tokens=False):
            np.asarray(e.ids + [eos], dtype="<u4").tofile(out)
        batch.clear()
    for line in f:
        n_bytes += len(line.encode("utf-8"))
        batch.append(json.loads(line)["text"])
        if len(batch) >= 4096:
            flush()
    flush()
dt = time.perf_counter() - t0
print(f"{n_bytes / 1e6 / dt:.2f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}")
PY
)
    hf_mbs=${hf% *}; hf_rss=${hf#* }
    hf_tokens=$(( $(stat -c %s "$work/hf_tokens.u32") / 4 ))
    rm -f "$work/hf_tokens.u32"
    ratio=$(echo "scale=2; $medllm_mbs / $hf_mbs" | bc)
    echo "corpus ${mb} MB ($bytes bytes, $docs documents): medllm $medllm_mbs MB/s (wall $wall), peak RSS $rss_mb MB, $tokens tokens;" \
         "HF tokenizers $hf_mbs MB/s (RSS $hf_rss MB, $hf_tokens tokens); ratio ${ratio}x; reuse ${reuse_s} s; guard $guard"
    rm -f "$corpus"
done
if [ ${#rss_list[@]} -ge 2 ]; then
    first=${rss_list[0]}; last=${rss_list[-1]}
    ratio=$(echo "scale=2; ${last#*:} / ${first#*:}" | bc)
    verdict=$( [ "$(echo "$ratio <= 1.5" | bc)" = 1 ] && echo "within" || echo "ABOVE" )
    echo "peak RSS ${last%%:*} MB corpus / ${first%%:*} MB corpus: ${last#*:} / ${first#*:} MB = ${ratio}x ($verdict the 1.5x target)"
fi
