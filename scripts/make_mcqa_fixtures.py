#!/usr/bin/env python3
"""Golden fixtures for `medllm eval mcqa` (tests/generate/mcqa_test.cpp, tests/eval/mcqa_scoring_test.cpp).

Writes a few questions of each loader's format (JMedBench-style JSONL, MMMLU CSV with quoted fields, PubMedQA
JSONL with list contexts) into tests/fixtures/eval/mcqa/, renders each question's prompt as the task definitions
do, and computes on the fixture model tests/fixtures/model/qwen2-tiny-untied with transformers (fp32, CPU) every
option's log-likelihood exactly as lm-evaluation-harness's HFLM does for a `multiple_choice` task:

  * request = (prompt, target_delimiter + choice); HFLM._encode_pair: trailing whitespace of the context moves to
    the continuation, continuation ids = encode(context + continuation)[len(encode(context)):];
  * one forward of context ids + continuation ids[:-1], fp32 log_softmax, the continuation tokens' log-probs
    summed; is_greedy = every continuation token is the argmax;
  * lm_eval/api/task.py ConfigurableTask.process_results: pred = np.argmax(lls),
    pred_norm = np.argmax(lls / completion_len) with completion_len = len(choice) (Python str: code points);
    acc / acc_norm = mean over questions of (pred == gold) / (pred_norm == gold);
  * JMedBench's own scorer (nii-nlp/med-eval evaluate_mcqa.py, "norm_accuracy"): pred_norm_tokens =
    np.argmin(loss / n_valid_tokens) with loss = -ll and n_valid_tokens = the option's continuation tokens (those
    after the prompt's); acc_norm_tokens = mean of (pred_norm_tokens == gold).

The tokenizer is the tests' tiny byte-level BPE (tests/generate/generate_test_util.h write_tiny_tokenizer: ids 0..2
special, 3..258 bytes, five merges) with Qwen2's pre-tokenizer regex and NFC, as medllm's BPE backend runs it.
Output: tests/fixtures/eval/mcqa/{medqa.jsonl, mmmlu.csv, pubmedqa.jsonl, reference.json}.

    .venv/bin/python scripts/make_mcqa_fixtures.py
"""
import csv
import io
import json
import os

import numpy as np
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIX, "eval", "mcqa")
MODEL = os.path.join(FIX, "model", "qwen2-tiny-untied")

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


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
    sym = bytes_to_unicode()
    vocab = {sym[b]: 3 + b for b in range(256)}
    merges = [(sym[ord(" ")], "t"), ("h", "e"), (sym[ord(" ")] + "t", "he"), ("i", "n"), ("e", "r")]
    for i, (a, b) in enumerate(merges):
        vocab[a + b] = 259 + i
    vocab.update({"<|im_end|>": 0, "<|im_start|>": 1, "<|endoftext|>": 2})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|im_end|>", "<|im_start|>", "<|endoftext|>"])
    return tok


# ---------------------------------------------------------------- data (the loaders' three formats)

MEDQA_ROWS = [
    {"id": "mq1", "question": "発熱の原因は？", "options": ["感染", "骨折", "貧血", "脱水", "腫瘍"], "answer": "A"},
    {"id": "mq2", "question": "心臓の弁は何個？", "options": ["1個", "2個", "3個", "4個", "5個"], "answer": 3},
    {"id": "mq3", "question": "Which one treats diabetes?",
     "options": ["aspirin", "insulin", "the heparin", "none", "all of them"], "answer": "insulin"},
    {"id": "mq4", "question": "貧血で低下するのは？", "A": "血小板", "B": "ヘモグロビン", "C": "尿酸", "D": "体温",
     "E": "血圧", "answer": "b"},
]
MEDQA_BAD_LINE = '{"id": "bad", "question": "選択肢のない問題"}'  # skipped: no options

MMMLU_HEADER = ["", "Question", "A", "B", "C", "D", "Answer", "Subject"]
MMMLU_ROWS = [
    ["0", "骨の数は、成人で約何本？", "106", "206", "306", "406", "B", "anatomy"],
    ["1", "Vitamin K deficiency causes:\n\"bleeding\", or clotting?", "bleeding, mostly", "clotting", "rash", "fever",
     "A", "clinical_knowledge"],
    ["2", "天文学の問題", "太陽", "月", "星", "雲", "C", "astronomy"],  # filtered out by subject
    ["3", "遺伝の法則は誰？", "メンデル", "ダーウィン", "パスツール", "コッホ", "A", "medical_genetics"],
]

PUBMEDQA_ROWS = [
    {"id": "pm1", "question": "運動は血圧を下げるか？", "context": ["運動群で血圧が低下した。", "副作用はなかった。"],
     "answer": "yes"},
    # JMedBench's shape: sample_id, options, answer_idx, the context under metadata
    {"sample_id": "pm2", "question": "薬Xは無効か？", "options": ["yes", "no", "maybe"], "answer_idx": 2,
     "metadata": {"context": "効果は不明確であった。"}},
    {"id": "pm3", "question": "Is the drug harmful?", "context": ["No harm was seen."], "answer": "maybe"},
]

LABELS5 = ["A", "B", "C", "D", "E"]
MEDQA_PROMPT = "質問：{question}\n{options}\n答え："  # JMedBench mcqa_with_options_jp
MMMLU_PROMPT = "質問：{question}\n選択肢：\n{options}\n答え："
PUBMEDQA_PROMPT = "要旨：{context}\n質問：{question}\n答え："  # JMedBench context_based_mcqa_jp
MMMLU_SUBJECTS = ["anatomy", "clinical_knowledge", "college_medicine", "medical_genetics", "professional_medicine"]


def write_data():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "medqa.jsonl"), "w", encoding="utf-8") as f:
        for i, r in enumerate(MEDQA_ROWS):
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            if i == 1:
                f.write(MEDQA_BAD_LINE + "\n")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(MMMLU_HEADER)
    for r in MMMLU_ROWS:
        w.writerow(r)
    with open(os.path.join(OUT, "mmmlu.csv"), "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
    with open(os.path.join(OUT, "pubmedqa.jsonl"), "w", encoding="utf-8") as f:
        for r in PUBMEDQA_ROWS:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def questions():
    """(case data file, questions as {id, question, context, options, answer}) per format, as the loaders read them."""
    medqa = []
    for r in MEDQA_ROWS:
        opts = r["options"] if "options" in r else [r[label] for label in LABELS5 if label in r]
        a = r["answer"]
        if isinstance(a, int):
            gold = a
        elif a.upper() in LABELS5[:len(opts)]:
            gold = LABELS5.index(a.upper())
        else:
            gold = opts.index(a)
        medqa.append(dict(id=r["id"], question=r["question"], context="", options=opts, answer=gold))
    mmmlu = [dict(id=r[0], question=r[1], context="", options=r[2:6], answer="ABCD".index(r[6]), subject=r[7])
             for r in MMMLU_ROWS if r[7] in MMMLU_SUBJECTS]
    pubmed = []
    for r in PUBMEDQA_ROWS:
        c = r["context"] if "context" in r else r["metadata"]["context"]
        ctx = "\n".join(c) if isinstance(c, list) else c
        gold = r["answer_idx"] if "answer_idx" in r else ["yes", "no", "maybe"].index(r["answer"])
        pubmed.append(dict(id=r.get("id", r.get("sample_id")), question=r["question"], context=ctx,
                           options=["yes", "no", "maybe"], answer=gold))
    return {"medqa": medqa, "mmmlu": mmmlu, "pubmedqa": pubmed}


def render(template, q, labels):
    opts = "\n".join(f"{labels[i]}. {o}" for i, o in enumerate(q["options"]))
    return template.format(question=q["question"], options=opts, context=q["context"])


def chatml(text):
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


# ---------------------------------------------------------------- lm-eval's computation

def encode(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def encode_pair(tok, context, continuation):
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(tok, context + continuation)
    ctx = encode(tok, context)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def loglikelihood(model, ctx, cont):
    inp = torch.tensor([ctx + cont[:-1]])
    logits = model(inp).logits[0, -len(cont):].float()
    lp = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(cont)
    greedy = bool((logits.argmax(-1) == target).all())
    return float(lp.gather(1, target[:, None]).sum()), greedy


def main():
    write_data()
    tok = tiny_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    model.eval()
    qs = questions()
    # task (built-in), its overrides, data file, template, delimiter, what is scored, prompt format
    cases = [
        ("medqa-label", "medqa-jp", {"choice": "label"}, "medqa.jsonl", "medqa", MEDQA_PROMPT, " ", "label", "base"),
        ("medqa-option", "medqa-jp", {}, "medqa.jsonl", "medqa", MEDQA_PROMPT, " ", "option", "base"),
        ("medqa-option-chat", "medqa-jp", {}, "medqa.jsonl", "medqa", MEDQA_PROMPT, "", "option",
         "chat"),
        ("mmmlu", "mmmlu-medical", {}, "mmmlu.csv", "mmmlu", MMMLU_PROMPT, " ", "label", "base"),
        ("pubmedqa", "pubmedqa-jp", {}, "pubmedqa.jsonl", "pubmedqa", PUBMEDQA_PROMPT, " ", "option", "base"),
    ]
    ref = {"transformers": transformers.__version__, "torch": torch.__version__, "model": "qwen2-tiny-untied",
           "cases": []}
    for name, task, overrides, data, fmt, template, delim, what, prompt_format in cases:
        labels = LABELS5
        out_qs = []
        for q in qs[fmt]:
            prompt = render(template, q, labels)
            if prompt_format == "chat":
                prompt = chatml(prompt)
            choices = [labels[i] if what == "label" else o for i, o in enumerate(q["options"])]
            conts = [delim + c for c in choices]
            lls, greedy, ctx_ids, cont_ids = [], [], None, []
            for c in conts:
                ctx, cont = encode_pair(tok, prompt, c)
                assert len(ctx) + len(cont) <= model.config.max_position_embeddings, (name, q["id"])
                ll, g = loglikelihood(model, ctx, cont)
                lls.append(ll)
                greedy.append(g)
                ctx_ids = ctx
                cont_ids.append(cont)
            completion_len = np.array([float(len(c)) for c in choices])
            pred = int(np.argmax(lls))
            pred_norm = int(np.argmax(np.array(lls) / completion_len))
            pred_norm_tokens = int(np.argmin([-ll / len(c) for ll, c in zip(lls, cont_ids)]))
            out_qs.append(dict(id=q["id"], prompt=prompt, choices=choices, continuations=conts, gold=q["answer"],
                               context_ids=ctx_ids, continuation_ids=cont_ids, logprobs=lls, greedy=greedy,
                               pred=pred, pred_norm=pred_norm, pred_norm_tokens=pred_norm_tokens))
        acc = float(np.mean([q["pred"] == q["gold"] for q in out_qs]))
        acc_norm = float(np.mean([q["pred_norm"] == q["gold"] for q in out_qs]))
        acc_norm_tokens = float(np.mean([q["pred_norm_tokens"] == q["gold"] for q in out_qs]))
        ref["cases"].append(dict(name=name, task=task, overrides=overrides, data=data, prompt_format=prompt_format,
                                 questions=out_qs, acc=acc, acc_norm=acc_norm, acc_norm_tokens=acc_norm_tokens))
        print(f"{name}: {len(out_qs)} questions, acc {acc:.3f}, acc_norm {acc_norm:.3f}, "
              f"acc_norm_tokens {acc_norm_tokens:.3f}")
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
