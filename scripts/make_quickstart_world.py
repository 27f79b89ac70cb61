#!/usr/bin/env python3
"""Writes the quickstart's synthetic medical world under configs/quickstart/ (seeded; re-run to regenerate).

    .venv/bin/python scripts/make_quickstart_world.py [--out configs/quickstart] [--seed 17]

Everything the embedded pipeline needs, with no downloads:
  world.json                 the 40 fictional diseases and their facts (the truth the exams are scored against)
  corpus/texts.jsonl         CPT corpus: explanatory texts about every disease, several paraphrases each, and
                             practice questions answered with the option text (never an evaluation question)
  past_exams/past.jsonl      "past exams" (exam 105) with verified explanations: build-prefs' input
  igakuqa/data/<year>/...    held-out "evaluation exams" in IgakuQA's record format and layout (2021 and 2022,
                             sections A-F, with *_metadata.jsonl), so `medllm eval igakuqa` reads them unchanged
  igakuqa/scripts/prompts/prompt.jsonl   the 3 few-shot examples (past-exam questions with explanations)
  pass_lines.json            the world's own pass line per exam (the MHLW lines are for the real exam sizes)
  model/                     a tiny Qwen2 (2 layers, hidden 128, tied embeddings) with random weights (seeded,
                             fp32 safetensors) and a byte-level BPE tokenizer.json whose merges build exactly the
                             characters of the world (every other byte sequence falls back to single bytes)

Facts are relations disease -> finding / test / treatment / contraindicated drug. Each question type has three
phrasings: phrasing 0 is used only in the corpus' practice questions, 1 only in the past exams, 2 only in the
evaluation exams, and evaluation questions draw other distractors, so the contamination guard (8-gram containment)
finds no evaluation question in any corpus document while the facts they ask about are all in the corpus.
"""
import argparse
import json
import os
import random
import struct

import numpy as np

KATA = list("アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワガギグゲゴザジズ"
            "ゼゾダデドバビブベボパピプペポ")
DISEASE_SUFFIX = ["病", "症候群", "熱", "症"]
DRUG_SUFFIX = ["マブ", "シン", "ロール", "チド", "パム", "ミン"]
BODY = ["手掌", "足背", "舌", "眼瞼", "背部", "頸部", "前胸部", "腹部", "口唇", "耳介", "膝関節", "前腕"]
SIGN = ["紫斑", "結節", "水疱", "紅斑", "硬結", "色素沈着", "潰瘍", "腫脹"]
TEST_KIND = ["抗{}抗体", "血清{}値", "{}負荷試験", "尿中{}", "{}染色"]
ORGAN = ["肝臓", "腎臓", "肺", "心臓", "皮膚", "関節", "神経", "血液", "腸管", "甲状腺"]
CATEGORY = {"肝臓": "消化器", "腎臓": "腎臓", "肺": "呼吸器", "心臓": "循環器", "皮膚": "皮膚科", "関節": "膠原病",
            "神経": "神経", "血液": "血液", "腸管": "消化器", "甲状腺": "代謝・内分泌"}

# Question types: (relation, phrasings 0/1/2, option kind). {d} disease, {f} finding.
QTYPES = {
    "finding_to_disease": (["{f}を認める疾患はどれか。", "{f}がみられるのはどれか。", "{f}を特徴とする疾患はどれか。"],
                           "disease"),
    "test": (["{d}の診断に用いる検査はどれか。", "{d}を疑ったときに行う検査はどれか。", "{d}の確定に有用な検査はどれか。"],
             "test"),
    "treatment": (["{d}の治療に用いる薬はどれか。", "{d}に投与する薬剤はどれか。", "{d}の第一選択薬はどれか。"], "drug"),
    "contraindication": (["{d}で使ってはならない薬はどれか。", "{d}の患者に避けるべき薬剤はどれか。",
                          "{d}で禁忌となる薬剤はどれか。"], "drug"),
    "disease_to_finding": (["{d}でみられる所見はどれか。", "{d}の患者に認める所見はどれか。", "{d}に特徴的な所見はどれか。"],
                           "finding"),
}
LETTERS = "abcde"
# The evaluator's explanation-mode instruction line (src/eval/prompt.cpp kExplainChoices).
EXPLAIN_INSTRUCTION = "まず解説を書き、最後に「答え:」に続けて選んだ選択肢の記号を書いてください。"
EVAL_YEARS = [2021, 2022]
SECTIONS = "ABCDEF"
PER_SECTION = 10           # evaluation questions per section: 60 per exam, 120 in all
PAST_EXAM = 105
PAST_QUESTIONS = 100
PRACTICE_PER_FACT = 1


def unique_names(rng, count, make):
    out, seen = [], set()
    while len(out) < count:
        name = make()
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def kata(rng, lo, hi):
    return "".join(rng.choice(KATA) for _ in range(rng.randint(lo, hi)))


def make_world(rng, n):
    diseases = unique_names(rng, n, lambda: kata(rng, 2, 3) + rng.choice(DISEASE_SUFFIX))
    drugs = unique_names(rng, n, lambda: kata(rng, 2, 3) + rng.choice(DRUG_SUFFIX))
    tests = unique_names(rng, n, lambda: rng.choice(TEST_KIND).format(kata(rng, 2, 3)))
    findings = [b + "の" + s for b in BODY for s in SIGN]
    rng.shuffle(findings)
    world = []
    for i, name in enumerate(diseases):
        contra = (i + 1 + rng.randrange(n - 1)) % n  # another disease's drug
        organ = rng.choice(ORGAN)
        world.append({"name": name, "organ": organ, "category": CATEGORY[organ], "finding": findings[i],
                      "test": tests[i], "treatment": drugs[i], "contraindication": drugs[contra]})
    return world, drugs, tests, findings[:n]


def texts_about(rng, d):
    """Explanatory paraphrases of one disease's facts (the CPT corpus' textbook part)."""
    n, f, t, r, c, o = d["name"], d["finding"], d["test"], d["treatment"], d["contraindication"], d["organ"]
    sentences = [
        [f"{n}は{o}を侵す疾患である。", f"{n}は主に{o}に病変をきたす。", f"{o}の疾患として{n}が知られている。"],
        [f"{n}では{f}を認める。", f"{n}の患者には{f}がみられる。", f"{f}は{n}に特徴的である。"],
        [f"{n}の診断には{t}を行う。", f"{t}は{n}の診断に有用である。", f"{n}を疑えば{t}を調べる。"],
        [f"{n}の治療には{r}を用いる。", f"{r}は{n}の治療薬である。", f"{n}には{r}を投与する。"],
        [f"{n}では{c}は禁忌である。", f"{c}は{n}の患者に投与してはならない。", f"{n}に{c}を使うと悪化する。"],
    ]
    docs = []
    for k in range(6):
        order = list(range(5))
        rng.shuffle(order)
        docs.append("".join(rng.choice(sentences[i]) for i in order))
    return docs


def option_pool(kind, world, drugs, tests, findings):
    return {"disease": [d["name"] for d in world], "drug": drugs, "test": tests, "finding": findings}[kind]


def make_question(rng, d, qtype, phrasing, world, drugs, tests, findings, avoid=()):
    """One 5-option question about disease d: (stem, choices, answer letter, correct text)."""
    patterns, kind = QTYPES[qtype]
    stem = patterns[phrasing].format(d=d["name"], f=d["finding"])
    correct = {"finding_to_disease": d["name"], "test": d["test"], "treatment": d["treatment"],
               "contraindication": d["contraindication"], "disease_to_finding": d["finding"]}[qtype]
    pool = [x for x in option_pool(kind, world, drugs, tests, findings) if x != correct and x not in avoid]
    if qtype == "contraindication":   # the disease's own treatment is a tempting wrong option
        pool = [x for x in pool if x != d["treatment"]]
        distractors = [d["treatment"]] + rng.sample(pool, 3)
    elif qtype == "treatment":
        pool = [x for x in pool if x != d["contraindication"]]
        distractors = [d["contraindication"]] + rng.sample(pool, 3)
    else:
        distractors = rng.sample(pool, 4)
    choices = distractors + [correct]
    rng.shuffle(choices)
    return stem, choices, LETTERS[choices.index(correct)], correct


def explanation(d, qtype, correct):
    n = d["name"]
    return {"finding_to_disease": f"{d['finding']}は{n}に特徴的である。",
            "test": f"{n}の診断には{d['test']}を行う。",
            "treatment": f"{n}の治療には{d['treatment']}を用いる。{d['contraindication']}は禁忌である。",
            "contraindication": f"{n}では{d['contraindication']}は禁忌である。{d['treatment']}は治療薬である。",
            "disease_to_finding": f"{n}では{d['finding']}を認める。"}[qtype] + f"正解は{correct}である。"


def render_question(stem, choices):
    # The evaluator's user turn (src/eval/prompt.cpp render_user_turn, standard mode), so practice questions look
    # like the exam; answered with the option text, which a tiny model can learn (letters it cannot).
    lines = ["問題: " + stem] + [f"{LETTERS[i]}: {c}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\n必ずa,b,c,d,eの中からちょうど1個選んでください。"


def write_jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


# ---- tokenizer ----------------------------------------------------------------------------------------------

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


QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def make_tokenizer(chars):
    """Byte-level BPE: the 256 byte symbols, then merges that build each multi-byte character of the world."""
    b2u = bytes_to_unicode()
    vocab, merges = {}, []
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    for ch in sorted(chars):
        enc = ch.encode("utf-8")
        if len(enc) == 1:
            continue
        cur = b2u[enc[0]]
        for b in enc[1:]:
            nxt = cur + b2u[b]
            if nxt not in vocab:
                merges.append(cur + " " + b2u[b])
                vocab[nxt] = len(vocab)
            cur = nxt
    eos = len(vocab)
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": eos, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    return tok, eos


# ---- model --------------------------------------------------------------------------------------------------

def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        blob = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def make_model(out_dir, vocab_size, eos, seed, hidden=128, layers=2, heads=4, kv_heads=2, inter=352):
    rng = np.random.default_rng(seed)
    std = 0.02
    head_dim = hidden // heads
    t = {"model.embed_tokens.weight": rng.normal(0, std, (vocab_size, hidden)),
         "model.norm.weight": np.ones(hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = np.ones(hidden)
        t[p + "post_attention_layernorm.weight"] = np.ones(hidden)
        t[p + "self_attn.q_proj.weight"] = rng.normal(0, std, (heads * head_dim, hidden))
        t[p + "self_attn.q_proj.bias"] = np.zeros(heads * head_dim)
        t[p + "self_attn.k_proj.weight"] = rng.normal(0, std, (kv_heads * head_dim, hidden))
        t[p + "self_attn.k_proj.bias"] = np.zeros(kv_heads * head_dim)
        t[p + "self_attn.v_proj.weight"] = rng.normal(0, std, (kv_heads * head_dim, hidden))
        t[p + "self_attn.v_proj.bias"] = np.zeros(kv_heads * head_dim)
        t[p + "self_attn.o_proj.weight"] = rng.normal(0, std, (hidden, heads * head_dim))
        t[p + "mlp.gate_proj.weight"] = rng.normal(0, std, (inter, hidden))
        t[p + "mlp.up_proj.weight"] = rng.normal(0, std, (inter, hidden))
        t[p + "mlp.down_proj.weight"] = rng.normal(0, std, (hidden, inter))
    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(os.path.join(out_dir, "model.safetensors"), t)
    config = {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": eos,
              "eos_token_id": eos, "hidden_act": "silu", "hidden_size": hidden, "initializer_range": std,
              "intermediate_size": inter, "max_position_embeddings": 4096, "max_window_layers": layers,
              "model_type": "qwen2", "num_attention_heads": heads, "num_hidden_layers": layers,
              "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
              "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "float32",
              "use_cache": True, "use_sliding_window": False, "vocab_size": vocab_size}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": eos, "eos_token_id": eos}, f, indent=2)
    return sum(a.size for a in t.values())


def general_documents(seed, n):
    """Pretraining text from *another* synthetic world (other diseases, drugs, tests): the base model learns the
    language, the exam format and answering with the option text, but none of the quickstart world's facts."""
    rng = random.Random(seed)
    world, drugs, tests, findings = make_world(rng, n)
    docs = []
    for d in world:
        docs += texts_about(rng, d)
    for d in world:
        for qt in QTYPES:
            for _ in range(2):
                stem, choices, letter, correct = make_question(rng, d, qt, rng.randrange(3), world, drugs, tests,
                                                               findings)
                q = render_question(stem, choices)
                if rng.random() < 0.5:
                    docs.append(q + "\n答え:" + correct)
                else:
                    docs.append(q + "\n" + EXPLAIN_INSTRUCTION + "\n解説: " + explanation(d, qt, correct) + "\n答え:" +
                                correct)
    rng.shuffle(docs)
    return docs, {d["name"] for d in world}


def pretrain(model_dir, tokenizer_file, docs, seed, steps, seq_len=256, batch=8, lr=3e-3):
    """Full training of the random base on the general text (PyTorch + transformers, CPU, seeded), saved in place."""
    import torch
    from tokenizers import Tokenizer
    from transformers import Qwen2ForCausalLM
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    tok = Tokenizer.from_file(tokenizer_file)
    eos = tok.token_to_id("<|endoftext|>")
    stream = []
    for d in docs:
        stream += tok.encode(d).ids + [eos]
    data = torch.tensor(stream)
    model = Qwen2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 20) * max(0.05, 1 - i / steps))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=g)
        x = torch.stack([data[i:i + seq_len] for i in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 10 == 0 or step == steps - 1:
            print(f"pretrain step {step + 1}/{steps} loss {loss.item():.3f}", flush=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    os.chmod(os.path.join(model_dir, "model.safetensors"), 0o644)
    return loss.item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="configs/quickstart")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--diseases", type=int, default=40)
    ap.add_argument("--pretrain-steps", type=int, default=80,
                    help="full-training steps of the base on the general world (0 = leave it random)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    out = args.out
    world, drugs, tests, findings = make_world(rng, args.diseases)
    facts = [(d, q) for d in world for q in QTYPES]

    # Evaluation exams: distinct (disease, type) facts, phrasing 2.
    eval_facts = rng.sample(facts, len(EVAL_YEARS) * len(SECTIONS) * PER_SECTION)
    eval_records = {}
    k = 0
    for year in EVAL_YEARS:
        exam = year - 1906
        for s in SECTIONS:
            qs, meta = [], []
            for i in range(PER_SECTION):
                d, qt = eval_facts[k]
                k += 1
                stem, choices, letter, _ = make_question(rng, d, qt, 2, world, drugs, tests, findings)
                pid = f"{exam}{s}{i + 1}"
                points = "3" if s in "CF" else "1"   # clinical sections weigh 3, as in the real exam
                qs.append({"problem_id": pid, "problem_text": stem, "choices": choices, "text_only": True,
                           "answer": [letter], "points": points})
                kinki = []
                if qt == "treatment":   # choosing the contraindicated drug is a prohibited choice
                    kinki = [LETTERS[choices.index(d["contraindication"])]]
                meta.append({"problem_id": pid, "category": d["category"], "kinki": kinki, "reason": qt,
                             "human_accuracy": "", "breakdown": []})
            eval_records[(year, exam, s)] = (qs, meta)
    eval_choice_sets = {}
    for (qs, _) in eval_records.values():
        for q in qs:
            eval_choice_sets.setdefault(q["problem_text"], set()).update(q["choices"])

    # Past exams with verified explanations (phrasing 1), and the 3 few-shot examples among them.
    past = []
    for i, (d, qt) in enumerate(rng.sample(facts, PAST_QUESTIONS)):
        stem, choices, letter, correct = make_question(rng, d, qt, 1, world, drugs, tests, findings)
        past.append({"problem_id": f"{PAST_EXAM}A{i + 1}", "problem_text": stem, "choices": choices,
                     "text_only": True, "answer": [letter], "explanation": explanation(d, qt, correct)})
    few_shot, past_for_prefs = past[:3], past[3:]

    # CPT corpus: textbook paraphrases + practice questions (phrasing 0) answered with the option text; half of
    # them explanation-first, as the evaluator's explanation mode asks.
    docs = []
    for d in world:
        for t in texts_about(rng, d):
            docs.append({"text": t, "kind": "text", "disease": d["name"]})
    for d, qt in facts:
        for _ in range(PRACTICE_PER_FACT):
            stem, choices, letter, correct = make_question(rng, d, qt, 0, world, drugs, tests, findings)
            q = render_question(stem, choices)
            if rng.random() < 0.5:
                text = q + "\n答え:" + correct
            else:
                text = (q + "\n" + EXPLAIN_INSTRUCTION + "\n解説: " + explanation(d, qt, correct) + "\n答え:" +
                        correct)
            docs.append({"text": text, "kind": "practice", "disease": d["name"]})
    rng.shuffle(docs)

    write_jsonl(f"{out}/corpus/texts.jsonl", docs)
    write_jsonl(f"{out}/past_exams/past.jsonl", past_for_prefs)
    write_jsonl(f"{out}/igakuqa/scripts/prompts/prompt.jsonl", few_shot)
    for (year, exam, s), (qs, meta) in eval_records.items():
        write_jsonl(f"{out}/igakuqa/data/{year}/{exam}-{s}.jsonl", qs)
        write_jsonl(f"{out}/igakuqa/data/{year}/{exam}-{s}_metadata.jsonl", meta)
    pass_lines = {str(y): {"pass_fraction": 0.6,
                           "note": "the world's own line: 60% of the points possible (the MHLW lines are for the "
                                   "real 400-question exam, which the evaluator reports as incomplete here)"}
                  for y in EVAL_YEARS}
    with open(f"{out}/pass_lines.json", "w", encoding="utf-8") as f:
        json.dump(pass_lines, f, ensure_ascii=False, indent=2)
    with open(f"{out}/world.json", "w", encoding="utf-8") as f:
        json.dump({"seed": args.seed, "diseases": world}, f, ensure_ascii=False, indent=1)

    # Tokenizer over every character the world and the evaluator's prompts use.
    fixed = ("医師国家試験を解きます。問題: 必ずa,b,c,d,eの中からちょうど個選んでください。答え:"
             "まず解説を書き、最後に「答え:」に続けて選んだ選択肢の記号を書いてください。数値解説: "
             "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ,.:;!?()[]{}<>-_/'\"+=*&%$#@ \n")
    chars = set(fixed)
    general, general_names = general_documents(args.seed + 1000, args.diseases)
    assert not general_names & {d["name"] for d in world}, "the general world shares a disease name"
    chars.update("".join(general))
    for path in [f"{out}/corpus/texts.jsonl", f"{out}/past_exams/past.jsonl",
                 f"{out}/igakuqa/scripts/prompts/prompt.jsonl"] + \
            [f"{out}/igakuqa/data/{y}/{y - 1906}-{s}.jsonl" for y in EVAL_YEARS for s in SECTIONS]:
        with open(path, encoding="utf-8") as f:
            chars.update(f.read())
    tok, eos = make_tokenizer(chars)
    vocab_size = (eos + 1 + 63) // 64 * 64
    model_dir = f"{out}/model"
    os.makedirs(model_dir, exist_ok=True)
    with open(f"{model_dir}/tokenizer.json", "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    with open(f"{model_dir}/tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "add_bos_token": False,
                   "add_eos_token": False, "model_max_length": 4096}, f, indent=2)
    params = make_model(model_dir, vocab_size, eos, args.seed)
    if args.pretrain_steps:
        pretrain(model_dir, f"{model_dir}/tokenizer.json", general, args.seed, args.pretrain_steps)
    corpus_bytes = os.path.getsize(f"{out}/corpus/texts.jsonl")
    print(f"diseases {len(world)}, corpus {len(docs)} documents ({corpus_bytes} bytes), past questions "
          f"{len(past_for_prefs)} + {len(few_shot)} few-shot, evaluation questions {k}, vocabulary {eos + 1} "
          f"(model {vocab_size}), parameters {params}")


if __name__ == "__main__":
    main()
