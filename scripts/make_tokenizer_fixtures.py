#!/usr/bin/env python3
"""Golden tokenizer expectations from Hugging Face `tokenizers` (the reference implementation).

Builds the Qwen2.5 tokenizer exactly as its tokenizer.json describes it (NFC normalizer, the Qwen2 Split regex,
ByteLevel without regex, BPE, ByteLevel decoder, 22 added tokens) from the reference copies in
../shared/qwen_tokenizer/, encodes a deterministic set of texts and writes tests/fixtures/text/qwen2_golden.jsonl:
one {"text", "ids", "decoded", "decoded_skip"} object per line. Chat cases are rendered with the official Jinja
template (jinja2) and carry "messages" and "add_generation_prompt" too.

    .venv/bin/pip install -r scripts/requirements-fixtures.txt jinja2
    .venv/bin/python scripts/make_tokenizer_fixtures.py            # rewrite the committed fixture
    .venv/bin/python scripts/make_tokenizer_fixtures.py --sweep F  # every code point in several contexts -> F
    MEDLLM_TOKENIZER_SWEEP=F build/tests/test_text --gtest_also_run_disabled_tests --gtest_filter='QwenSweep.*'
    .venv/bin/python scripts/make_tokenizer_fixtures.py --save-json DIR  # write DIR/tokenizer.json (+ config)
"""
import argparse
import json
import random
import sys
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
QWEN = SHARED / "qwen_tokenizer"
OUT = ROOT / "tests" / "fixtures" / "text" / "qwen2_golden.jsonl"
OUT_ADDED = ROOT / "tests" / "fixtures" / "text" / "added_token_rules.jsonl"

PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE.from_file(str(QWEN / "vocab.json"), str(QWEN / "merges.txt")))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    added = json.loads((QWEN / "added_tokens_qwen2.5.json").read_text(encoding="utf-8"))
    for t in sorted(added, key=lambda t: t["id"]):
        token = AddedToken(t["content"], single_word=False, lstrip=False, rstrip=False, normalized=False,
                           special=t["special"])
        n = tok.add_special_tokens([token]) if t["special"] else tok.add_tokens([token])
        assert n == 1 and tok.token_to_id(t["content"]) == t["id"], t
    return tok


def igakuqa_texts(limit: int):
    texts = []
    for path in sorted((SHARED / "igakuqa_data" / "data").glob("*/*.jsonl")):
        if "_metadata" in path.name or "_translate" in path.name:
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            q = json.loads(line)
            texts.append(q["problem_text"] + "\n" + "\n".join(f"{chr(97 + i)}. {c}" for i, c in enumerate(q["choices"])))
    random.Random(3).shuffle(texts)
    return texts[:limit]


CURATED = [
    # Japanese medical text, full-width and half-width forms
    "58歳の男性。発熱と咳嗽を主訴に来院した。体温38.5℃、脈拍96/分、血圧128/76mmHg。",
    "ＣＲＰ　１２．３ｍｇ／ｄＬ、ＷＢＣ　１５，６００／μＬ。ｱﾙﾌｧﾍﾞｯﾄ ﾊﾝｶｸ ｶﾀｶﾅ ｶﾞｷﾞｸﾞ",
    "ｶﾞ and ガ and が; か\u3099 (combining voiced mark) and ハ\u309a",
    "HbA1c 7.2%、LDL-C 160 mg/dL、eGFR 45 mL/分/1.73m²。①②③ Ⅰ Ⅱ Ⅲ ⅳ ½ ¾ ²³",
    "「患者」『症状』【検査】〔所見〕…‥・〜～ー―‐",
    # English, contractions in both cases
    "The patient's BP wasn't controlled; they'll re-check. We've seen it, I'm sure, he'd agree.",
    "I'LL SAY IT'S THEY'RE WE'VE I'M HE'D DON'T 's 'S 't 'T 're 'Re 'rE 'RE 've 'VE 'm 'M 'll 'LL 'Ll 'd 'D",
    "'s'S'll'LL're 'x 'sam o'clock rock'n'roll ''s ' s",
    "Long s: 'ſ 'ſt and Kelvin 'K, dotted İ'S ı'LL",
    "Curly apostrophes: don’t it’s we’ll ‘quoted’",
    # whitespace runs
    " ", "  ", "\t", "\n", "\r\n", "\r\n\r\n", " \n \n ", "a  b   c    d", "a\t\tb", "a \t b", "  leading", "trailing  ",
    "x\n\n\ny", "x \n  y", "x\r\ry", "  \u3000  x", "a\u00a0b \u00a0c\u00a0\u00a0d", "a\u3000b\u3000\u3000c",
    "tab\there\tand  \t  there", "\n\n\n\n", " \t\n\r\x0b\x0c", "end with space ",
    # digits
    "0 1 12 123 1234 12345 3.14159 1,000,000 2024年12月31日 ０１２３ ٠١٢٣ १२३ 𝟏𝟐𝟑",
    "v1.2.3-rc4 0x1F 1e-5 -42 +7 100%",
    # emoji, ZWJ sequences, flags, skin tones, variation selectors
    "👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵🇺🇸 ❤️ ☺︎ 🤖 😀😃",
    "family: 👨\u200d👩\u200d👧 zwnj: ab\u200ccd zwsp: a\u200bb",
    # combining characters (NFC)
    "e\u0301 a\u0300 o\u0308 n\u0303 A\u030a c\u0327 Ä Å é", "\u1100\u1161\u11a8 각 \u1112\u1161\u11ab",
    "q\u0307\u0323 \u1e0b\u0323 d\u0323\u0307 \u212b \u2126 \u00c5",
    "x\u0301\u0301\u0301 \u0301start",
    # NFC singletons (Greek oxia vowels, Angstrom/Ohm/Kelvin signs) and composition exclusions
    "\u1f71\u1f73\u1f75\u1f77\u1f79\u1f7b\u1f7d \u1fbb\u1fc9\u1fcb\u1fd3\u1fdb\u1fe3\u1feb\u1fee\u1ff9\u1ffb \u212b\u2126\u212a",
    "\u0958\u0959 \u2adc \u0344 \u0f73 \u0340\u0341 a\u0340",
    # Korean, Chinese, other scripts
    "안녕하세요, 세계! 의학 시험 문제입니다.", "你好，世界！医学考试题目。这是一个测试。", "繁體中文：醫學檢查與診斷",
    "مرحبا بالعالم ١٢٣", "नमस्ते दुनिया १२३", "Привет, мир! Ёлка", "Γειά σου Κόσμε", "ខ្ញុំស្រលាញ់អ្នក", "שלום עולם",
    "ไทย ภาษา", "ᚠᛇᚻ", "𐍈𐌰𐌹", "𠮷野家 𩸽",
    # punctuation, symbols, mixed
    "Hello, y'all! 你好", "!!!???...", " !!! ", "a!b?c.", "(a)[b]{c}<d>", "C++ -> std::vector<int>; x += 1;",
    "def f(x):\n    return x**2  # comment\n", "<html><body class=\"x\">&amp;</body></html>",
    "email@example.com https://example.org/path?q=1&r=2#frag",
    # special / added tokens inside text
    "<|im_start|>user\nこんにちは<|im_end|>\n<|im_start|>assistant\n",
    "a<|endoftext|>b<|im_end|><|im_end|>c", "<|im_start|><|im_start|>", "<|im_start", "|im_start|>", "<|im_start|x",
    "<tool_call>{\"name\": \"f\"}</tool_call>", "<|fim_prefix|>def<|fim_suffix|>x<|fim_middle|>",
    " <|endoftext|> ", "\n<|endoftext|>\n", "<<|endoftext|>>", "<|vision_start|><|image_pad|><|vision_end|>",
    "<|box_start|>(1,2)<|box_end|> <|quad_start|><|quad_end|> <|object_ref_start|>x<|object_ref_end|>",
    "<|repo_name|>r<|file_sep|>f<|fim_pad|><|video_pad|><|vision_pad|>",
    "e\u0301<|im_end|>\u0301",
    # exotic white space and controls
    "a\u0085b", "a\u2028b\u2029c", "a\u180eb", "a\u200ab", "a\u202fb\u205fc", "a\u1680b", "a\ufeffb",
    "\x00\x01\x1f\x7f",
    # long runs (BPE on long words, long white space)
    "a" * 3000, " " * 2000 + "x", "ab" * 1500, "\u0301" * 500, "e\u0301" * 500, "1" * 300, "日本" * 700,
    "\n" * 300 + " " * 300, "!" * 1000, "a\x00b", "\ufffd\ufffe\uffff", "\U0010ffff\U000e0001",
]


def random_texts(count: int, seed: int):
    rng = random.Random(seed)
    pools = [
        "abcXYZ", "0123456789", " ", "  ", "\t", "\n", "\r", "'", "'s", "'LL", "!?.,;:", "日本語", "医学", "カタカナ",
        "ｶﾀｶﾅ", "한국어", "中文", "é", "e\u0301", "\u0301", "👍", "\u200d", "👨\u200d👩", "\u3000", "\u00a0", "１２",
        "٣", "<|im_end|>", "<|endoftext|>", "<tool_call>", "ſ", "Ω", "\u0085", "\u2028", "ǅ", "ⅷ", "𝟗", "_", "-",
        "—", "、", "。", "Ä", "ß", "İ", "\x0b", "\x0c", "𠮷",
    ]
    out = []
    for _ in range(count):
        out.append("".join(rng.choice(pools) for _ in range(rng.randint(1, 24))))
    return out


CHATS = [
    ([{"role": "user", "content": "高アンモニア血症をきたす疾患はどれか。"}], True),
    ([{"role": "system", "content": "あなたは医師です。"}, {"role": "user", "content": "Hi"}], True),
    ([{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
     False),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "u"}, {"role": "system", "content": "late"},
      {"role": "assistant", "content": "a\n\nb"}], True),
    ([{"role": "user", "content": "call"}, {"role": "tool", "content": "r1"}, {"role": "tool", "content": "r2"},
      {"role": "user", "content": "ok"}], True),
]


def render_chats():
    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False)
    template = env.from_string((QWEN / "chat_template_qwen2.5_instruct.jinja").read_text(encoding="utf-8"))
    return [(m, g, template.render(messages=m, add_generation_prompt=g, tools=None)) for m, g in CHATS]


def record(tok: Tokenizer, text: str, extra=None):
    ids = tok.encode(text, add_special_tokens=False).ids
    row = {"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
           "decoded_skip": tok.decode(ids, skip_special_tokens=True)}
    if extra:
        row.update(extra)
    return row


def sweep(tok: Tokenizer, path: Path):
    texts = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        x = chr(cp)
        texts.append(f"a{x}{x} {x}b\n{x}'{x}1 {x}  {x}\n")
    with path.open("w", encoding="utf-8") as f:
        for i in range(0, len(texts), 20000):
            chunk = texts[i:i + 20000]
            for text, enc in zip(chunk, tok.encode_batch(chunk, add_special_tokens=False)):
                f.write(json.dumps({"text": text, "ids": enc.ids}, ensure_ascii=False) + "\n")


# Added-token flags Qwen2.5 does not use but other tokenizer.json files do (lstrip/rstrip/single_word/normalized).
EXTRA_TOKENS = [
    dict(content="<mask>", lstrip=True, rstrip=False, single_word=False, normalized=False, special=True),
    dict(content="[SEP]", lstrip=False, rstrip=True, single_word=False, normalized=False, special=True),
    dict(content="word", lstrip=False, rstrip=False, single_word=True, normalized=False, special=False),
    dict(content="\u00e9t\u00e9", lstrip=False, rstrip=False, single_word=False, normalized=True, special=False),
    dict(content="<both>", lstrip=True, rstrip=True, single_word=False, normalized=False, special=False),
    dict(content="<|im_start|>x", lstrip=False, rstrip=False, single_word=False, normalized=False, special=False),
]
EXTRA_TEXTS = [
    "a <mask> b", "a   <mask>", "<mask>", "x\t\n <mask>y", "a [SEP]   b", "[SEP]\n\nz", "a word b", "aword b",
    "a words", "word", "(word)", "_word_", "1word", "\u00e9t\u00e9 et e\u0301te\u0301", "ete\u0301t\u00e9",
    "x  <both>  y", "\u2460word\u24b6 word\u0301 \u200dword -word- \u203fword\u3001word\u3002 \u0660word", "<both><both>", " <mask> [SEP] word <both> ", "<|im_start|>x <|im_start|>y", "日本word語 word。",
]


def added_rules_rows():
    tok = build_tokenizer()
    defs = []
    for t in EXTRA_TOKENS:
        token = AddedToken(t["content"], single_word=t["single_word"], lstrip=t["lstrip"], rstrip=t["rstrip"],
                           normalized=t["normalized"], special=t["special"])
        (tok.add_special_tokens if t["special"] else tok.add_tokens)([token])
        defs.append(dict(t, id=tok.token_to_id(t["content"])))
    rows = [{"tokens": defs}]
    rows += [record(tok, t) for t in EXTRA_TEXTS]
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", type=Path, help="write a per-code-point differential set to this file instead")
    ap.add_argument("--save-json", type=Path, help="write tokenizer.json and tokenizer_config.json to this dir")
    args = ap.parse_args()
    tok = build_tokenizer()
    if args.sweep:
        sweep(tok, args.sweep)
        return
    if args.save_json:
        args.save_json.mkdir(parents=True, exist_ok=True)
        tok.save(str(args.save_json / "tokenizer.json"))
        return

    rows = [record(tok, t, {"source": "curated"}) for t in CURATED]
    rows += [record(tok, t, {"source": "igakuqa"}) for t in igakuqa_texts(150)]
    rows += [record(tok, t, {"source": "random"}) for t in random_texts(400, seed=20250101)]
    for messages, gen, rendered in render_chats():
        rows.append(record(tok, rendered, {"source": "chat", "messages": messages, "add_generation_prompt": gen}))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} cases to {OUT.relative_to(ROOT)}", file=sys.stderr)
    rows = added_rules_rows()
    with OUT_ADDED.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows) - 1} cases to {OUT_ADDED.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
