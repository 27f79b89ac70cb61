#!/usr/bin/env python3
"""Shared set-up of the benchmarks at real shapes (issue 25): one random model folder both stacks load, real
IgakuQA prompts, and the measuring of a command (wall time, peak memory) with the machine's load.

The model is Qwen2ForCausalLM built by transformers from configs/models/<shape>/config.json (the real layer shapes
and the real 151,936-row vocabulary) with random weights (HF's init, seed 0), saved once in fp32 (bf16 for the GPU runs) as an HF folder
with the real Qwen2.5 tokenizer (tokenizer.json built from ../shared/qwen_tokenizer by
scripts/make_tokenizer_fixtures.py's builder, the Qwen2.5-Instruct chat template, and a generation_config.json with
Qwen2.5-Instruct's end-of-turn ids). Each stack loads it in the dtype asked for. The folder is cached under
$MEDLLM_BENCH_CACHE (default /tmp/medllm-bench) and rebuilt when the config or the code that builds it changes.

Prompts are IgakuQA questions rendered and tokenized by medllm (build/bench_igakuqa_prompts: the renderer and
tokenizer `medllm eval igakuqa` uses, the original scripts' 3 fixed shots; standard or explanation mode), the first
`limit` questions of each year and section, as `eval igakuqa --limit` takes them.

Library use (the bench scripts put scripts/ on sys.path):
    import bench_setup as bs
    model = bs.model_dir("qwen2.5-0.5b")            # path of the cached HF folder
    tok = bs.tokenizer(model)                        # transformers tokenizer of that folder
    prompts = bs.igakuqa_prompts("standard", years="2018", limit=3)   # [{"id", "prompt", "prompt_ids"}]
    r = bs.measure([cmd, ...], threads=2)           # {"seconds", "cpu_seconds", "peak_rss_mb", "stdout", "stderr"}
Command line:
    bench_setup.py model [--shape qwen2.5-0.5b]     # prints the folder (building it if needed)
    bench_setup.py prompts --mode standard --years 2018 --limit 3 --out prompts.jsonl   # prompt_ids JSONL
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("MEDLLM_SHARED_DIR", os.path.join(ROOT, "..", "shared"))
CACHE = os.environ.get("MEDLLM_BENCH_CACHE", "/tmp/medllm-bench")


def load_note():
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def _fingerprint(config_path):
    """Of the config and of the code that builds the folder (so editing the rest of this file keeps the cache)."""
    import inspect

    h = hashlib.sha256()
    with open(config_path, "rb") as f:
        h.update(f.read())
    for fn in (model_dir, _write_tokenizer):
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()[:16]


def _write_tokenizer(out):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from make_tokenizer_fixtures import build_tokenizer  # the Qwen2.5 tokenizer, tested golden against HF

    tok = build_tokenizer()
    tok.save(os.path.join(out, "tokenizer.json"))
    qwen = os.path.join(SHARED, "qwen_tokenizer")
    added = json.load(open(os.path.join(qwen, "added_tokens_qwen2.5.json"), encoding="utf-8"))
    with open(os.path.join(qwen, "chat_template_qwen2.5_instruct.jinja"), encoding="utf-8") as f:
        template = f.read()
    cfg = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": {str(t["id"]): {"content": t["content"], "special": t["special"]} for t in added},
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 131072,
        "chat_template": template,
    }
    json.dump(cfg, open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8"), ensure_ascii=False, indent=1)


def model_dir(shape="qwen2.5-0.5b", dtype="fp32"):
    """The cached random-weight HF folder of configs/models/<shape> (built on first use), saved in `dtype` (fp32, or
    bf16 for the 7B-and-up shapes the GPU benchmarks use: half the disk and load time)."""
    config_path = os.path.join(ROOT, "configs", "models", shape, "config.json")
    out = os.path.join(CACHE, f"{shape}-random-{'' if dtype == 'fp32' else dtype + '-'}{_fingerprint(config_path)}")
    if os.path.exists(os.path.join(out, "done")):
        return out
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    cfg = json.load(open(config_path))
    cfg.pop("torch_dtype", None)
    torch.manual_seed(0)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    torch.set_default_dtype(torch_dtype)  # built in its dtype: a 7B model is not first made in fp32
    model = Qwen2ForCausalLM(Qwen2Config(**cfg)).eval()
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(tmp, safe_serialization=True)
    # Qwen2.5-Instruct's end-of-turn ids (both stacks read them from here); no sampling defaults.
    json.dump({"eos_token_id": [151645, 151643], "pad_token_id": 151643},
              open(os.path.join(tmp, "generation_config.json"), "w"))
    _write_tokenizer(tmp)
    open(os.path.join(tmp, "done"), "w").close()
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    return out


def tokenizer(folder):
    from transformers import PreTrainedTokenizerFast

    cfg = json.load(open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8"))
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"), eos_token=cfg["eos_token"],
                                  pad_token=cfg["pad_token"])
    tok.chat_template = cfg["chat_template"]
    return tok


def igakuqa_prompts(mode, years="2018", limit=0, folder=None, fmt="chat", build="build"):
    """[{"id", "prompt", "prompt_ids"}]: the IgakuQA questions `medllm eval igakuqa --limit` takes (the first `limit`
    of each year and section; 0: all), rendered and tokenized by medllm itself (bench/igakuqa_prompts.cpp: the
    renderer and tokenizer eval igakuqa uses), in its order."""
    import tempfile

    helper = os.path.join(ROOT, build, "bench_igakuqa_prompts")
    if not os.access(helper, os.X_OK):
        sys.exit(f"bench: {helper} not built (cmake --build {build} --target bench_igakuqa_prompts)")
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
        subprocess.run([helper, os.path.join(SHARED, "igakuqa_data"), folder or model_dir(), mode, fmt, str(years),
                        str(limit), out.name], check=True)
        with open(out.name, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


def measure(cmd, threads, env=None):
    """Runs `cmd` with `threads` OpenMP/MKL threads; returns its wall seconds, CPU seconds (user + system, all its
    threads) and peak resident memory (MiB), both from wait4's rusage of this child alone, stdout and stderr. Exits
    naming the command when it fails."""
    import tempfile

    e = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if env:
        e.update(env)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err, env=e)
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(map(str, cmd))} failed ({p.returncode}):\n{stderr[-3000:]}")
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024.0,
            "stdout": stdout, "stderr": stderr}


def last_json(stdout):
    """The last stdout line that is a JSON object (what the bench helpers print)."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    sys.exit("bench: no JSON result line in:\n" + stdout[-2000:])


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model")
    m.add_argument("--shape", default="qwen2.5-0.5b")
    m.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p = sub.add_parser("prompts")
    p.add_argument("--shape", default="qwen2.5-0.5b")
    p.add_argument("--mode", default="standard", choices=["standard", "explanation"])
    p.add_argument("--years", default="2018")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--out", required=True)
    a = ap.parse_args()
    folder = model_dir(a.shape, getattr(a, "dtype", "fp32"))
    if a.cmd == "model":
        print(folder)
        return
    with open(a.out, "w") as f:
        for p in igakuqa_prompts(a.mode, a.years, a.limit, folder):
            f.write(json.dumps({"id": p["id"], "prompt_ids": p["prompt_ids"]}) + "\n")


if __name__ == "__main__":
    main()
