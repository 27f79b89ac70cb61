#!/usr/bin/env python3
"""TRL round trip for `medllm build-prefs` output: what medllm writes must load in TRL.

Loads each pairs file that build-prefs wrote (plain-text prompts for base models, message lists for chat) with
`datasets`, hands it to TRL's DPOTrainer unchanged (the extra columns problem_id, pair_type, ... included) and runs
one DPO step on the tiny fixture model (tests/fixtures/model/qwen2-tiny-tied) with the tiny byte-level tokenizer of
tests/generate/generate_test_util.h. Writes tests/fixtures/train/prefs_trl_roundtrip.json: per file the XXH3 of
the bytes read (as medllm's hash_bytes), the rows, the pair types, whether TRL saw it as conversational, and the
step-1 loss / grad norm. tests/train/prefs_trl_test.cpp checks the report against the committed pairs files, so
CI needs no Python.

    MEDLLM_UPDATE_FIXTURES=1 build/tests/test_train --gtest_filter='PrefsTrl*'   # rewrite the pairs files
    .venv/bin/pip install trl   # (trl 1.16.0 wrote the committed report)
    .venv/bin/python scripts/prefs_trl_roundtrip.py
"""
import json
import math
import os
import sys
import tempfile

import torch
import xxhash
from datasets import load_dataset
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
import trl
from trl import DPOConfig, DPOTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def tiny_tokenizer():
    """The same vocabulary as write_tiny_tokenizer (ids 0..2 special, 3..258 bytes, 5 merges)."""
    sym = bytes_to_unicode()
    vocab = {sym[b]: 3 + b for b in range(256)}
    merges = [(sym[ord(" ")], "t"), ("h", "e"), (sym[ord(" ")] + "t", "he"), ("i", "n"), ("e", "r")]
    for i, (a, b) in enumerate(merges):
        vocab[a + b] = 259 + i
    vocab.update({"<|im_end|>": 0, "<|im_start|>": 1, "<|endoftext|>": 2})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_end|>", "<|im_start|>"])
    fast.chat_template = CHATML
    return fast


def one_step(pairs_path, tokenizer):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(os.path.join(FIX, "model", "qwen2-tiny-tied"), dtype=torch.float32)
    model.config.max_position_embeddings = 8192  # the few-shot prompts are long in byte tokens; RoPE has no limit
    ds = load_dataset("json", data_files=pairs_path, split="train")
    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(output_dir=out, max_steps=1, per_device_train_batch_size=4, learning_rate=1e-3,
                        logging_steps=1, report_to=[], bf16=False, max_length=None, gradient_checkpointing=False,
                        save_strategy="no", seed=0, use_cpu=True, dataloader_num_workers=0)
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tokenizer)
        trainer.train()
        log = next(h for h in trainer.state.log_history if "loss" in h)
    return ds, log


def main():
    tokenizer = tiny_tokenizer()
    report = {"trl": trl.__version__, "torch": torch.__version__}
    for name in ("base", "chat"):
        path = os.path.join(FIX, "train", f"prefs_trl_pairs_{name}.jsonl")
        data = open(path, "rb").read()
        ds, log = one_step(path, tokenizer)
        first = ds[0]
        report[name] = {
            "xxh3": xxhash.xxh3_64_hexdigest(data),
            "rows": len(ds),
            "columns": sorted(ds.column_names),
            "pair_types": sorted(set(ds["pair_type"])),
            "conversational": trl.data_utils.is_conversational(first),
            "loss_step1": log["loss"],
            "grad_norm_step1": float(log["grad_norm"]),
        }
        print(name, report[name], file=sys.stderr)
        assert math.isfinite(log["loss"])
    out = os.path.join(FIX, "train", "prefs_trl_roundtrip.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
