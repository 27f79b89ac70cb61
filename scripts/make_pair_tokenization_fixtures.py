#!/usr/bin/env python3
"""Golden token ids for `medllm rpo`'s two pair tokenizations (data.tokenization), from TRL itself.

TRL v0.12-v0.28 tokenizes a pair's prompt, chosen and rejected on their own (DPOTrainer.tokenize_row after
maybe_apply_chat_template); TRL >= v0.29 / 1.x tokenizes prompt, prompt+chosen and prompt+rejected whole and lets
the completions start where the token lists diverge (DPOTrainer._prepare_dataset). The two differ when tokens merge
across the prompt/completion boundary: with Qwen2.5's tokenizer "答え:" + "a" is [答え, :] + [a] separately but
[答え, :a] whole, and so is the paper template's "\\n Answer:" + "c".

Run it once per TRL era; each run writes its own file into tests/fixtures/train/rpo/:

  # TRL 1.x (scripts/requirements-fixtures.txt pins trl 1.16.0) -> tokenization_trl1x.json
  .venv/bin/python scripts/make_pair_tokenization_fixtures.py
  # TRL 0.28 beside it without touching the main venv -> tokenization_trl028.json
  .venv/bin/pip install --no-deps --target .venv-trl028 trl==0.28.0
  PYTHONPATH=.venv-trl028 .venv/bin/python scripts/make_pair_tokenization_fixtures.py

Inputs: tests/fixtures/train/rpo/tokenization_pairs_{base,chat}.jsonl (written by the TRL 1.x run from the cases
below; both runs read them) and the first rows of build-prefs' pairs files tests/fixtures/train/
prefs_trl_pairs_{base,chat}.jsonl. Tokenizer: Qwen2.5's from ../shared/qwen_tokenizer (built as
scripts/make_tokenizer_fixtures.py builds it, golden-tested) with EOS <|endoftext|> and the Qwen2.5 instruct chat
template. No truncation (max_prompt_length / max_length None), so the files hold the tokenization alone.
Each file: {"trl", "tokenization", "files": {name: [{"prompt_ids", "chosen_ids", "rejected_ids"}, ...]}}.
tests/train/rpo_test.cpp (PrefDataTrl.*) checks medllm's loader against both.
"""
import json
import os
import sys
import types

import trl_compat  # noqa: F401,E402  (TRL 0.28 under transformers 5; before `import trl`)

import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "train", "rpo")
TRAIN = os.path.join(ROOT, "tests", "fixtures", "train")
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "qwen_tokenizer")
ERA = "028" if trl.__version__.startswith("0.") else "1x"

# String pairs: each prompt ends where a merge with the completion's first characters can happen, or cannot.
BASE = [
    {"prompt": "問題: 高アンモニア血症をきたす疾患はどれか。\na: Gaucher病\ne: オルニチントランスカルバミラーゼ欠損症\n答え:",
     "chosen": "e", "rejected": "a"},  # "答え:" + "e" -> ":e" is one token whole
    {"prompt": "Question: Which drug is first-line?\na: x\nb: y\nc: z\n Explanation:Guidelines say so.\n Answer:",
     "chosen": "c", "rejected": "a,c"},  # the paper template's marker + answer
    {"prompt": "Explanation: ", "chosen": "This is right.", "rejected": "That is wrong."},  # trailing space
    {"prompt": "解説:", "chosen": "鉄剤投与後に網赤血球数が増加する。", "rejected": "フェリチンが先に上昇する。"},
    {"prompt": "答え:", "chosen": " a", "rejected": "b<|endoftext|>"},  # no merge; EOS text already there
    {"prompt": "問題: 正しいのはどれか。\n答え：", "chosen": "c", "rejected": "d"},  # full-width colon: no merge
]
CHAT = [
    {"prompt": [{"role": "user", "content": "問題: 正しいのはどれか。\na: x\nb: y\n答え:"}],
     "chosen": [{"role": "assistant", "content": "b"}], "rejected": [{"role": "assistant", "content": "a"}]},
    {"prompt": [{"role": "system", "content": "医師国家試験を解きます。"},
                {"role": "user", "content": "Question: Which is correct?\na: x\nb: y"}],
     "chosen": [{"role": "assistant", "content": "Explanation: y holds.\n Answer:b"}],
     "rejected": [{"role": "assistant", "content": "Explanation: x holds.\n Answer:a"}]},
]


def tokenizer():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_tokenizer_fixtures import build_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(), eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    with open(os.path.join(SHARED, "chat_template_qwen2.5_instruct.jinja")) as f:
        tok.chat_template = f.read()
    return tok


def read_rows(path, limit=None):
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = rows[:limit] if limit else rows
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]


def tokenize_separate(rows, tok, is_chat):
    """TRL 0.28: maybe_apply_chat_template, then tokenize_row without truncation."""
    from trl.data_utils import maybe_apply_chat_template

    out = []
    for row in rows:
        ex = maybe_apply_chat_template(row, tok)
        ids = DPOTrainer.tokenize_row(ex, tok, max_prompt_length=None, max_completion_length=None,
                                      add_special_tokens=False, is_chat=is_chat)
        out.append({"prompt_ids": ids["prompt_input_ids"], "chosen_ids": ids["chosen_input_ids"],
                    "rejected_ids": ids["rejected_input_ids"]})
    return out


def tokenize_joint(rows, tok, is_chat):
    """TRL 1.x: DPOTrainer._prepare_dataset (EOS text, whole-sequence tokenization, split where they diverge) on a
    stand-in trainer that holds only the tokenizer, with max_length None (nothing dropped or cut)."""
    args = DPOConfig(output_dir="/tmp/medllm-tokenization-fixtures", max_length=None, report_to=[], use_cpu=True,
                     dataset_num_proc=None)
    stand_in = types.SimpleNamespace(_tokenizer=tok)
    ds = DPOTrainer._prepare_dataset(stand_in, Dataset.from_list(rows), tok, args, "fixture")
    return [{"prompt_ids": r["prompt_ids"], "chosen_ids": r["chosen_ids"], "rejected_ids": r["rejected_ids"]}
            for r in ds]


def main():
    tok = tokenizer()
    inputs = {}
    for kind, cases in (("base", BASE), ("chat", CHAT)):
        name = f"tokenization_pairs_{kind}.jsonl"
        path = os.path.join(OUT, name)
        if ERA == "1x":  # the 1.x run writes the inputs; the 0.28 run reads the same bytes
            with open(path, "w", encoding="utf-8") as f:
                for c in cases:
                    f.write(json.dumps(c, ensure_ascii=False) + "\n")
        inputs[name] = (os.path.join("rpo", name), read_rows(path), kind == "chat")
    for kind in ("base", "chat"):
        name = f"prefs_trl_pairs_{kind}.jsonl"
        inputs[name] = (name, read_rows(os.path.join(TRAIN, name), limit=4), kind == "chat")

    files = {}
    for name, (rel, rows, is_chat) in inputs.items():
        files[rel] = tokenize_separate(rows, tok, is_chat) if ERA == "028" else tokenize_joint(rows, tok, is_chat)
    mode = "separate" if ERA == "028" else "joint"
    with open(os.path.join(OUT, f"tokenization_trl{ERA}.json"), "w") as f:
        json.dump({"trl": trl.__version__, "tokenization": mode, "eos_token": "<|endoftext|>", "files": files}, f)
    print("wrote", os.path.join(OUT, f"tokenization_trl{ERA}.json"), "for TRL", trl.__version__, file=sys.stderr)


if __name__ == "__main__":
    main()
