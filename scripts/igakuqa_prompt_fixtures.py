#!/usr/bin/env python3
"""Golden fixtures for `medllm eval igakuqa` prompt rendering and answer normalisation.

1. tests/fixtures/eval/prompts_reference.json: for a few questions, the messages that the original
   jungokasai/IgakuQA scripts/generation/chatgpt.py builds (as described in docs/reference/igakuqa.md §6),
   and those messages rendered by the Qwen2.5-Instruct chat template (../shared/qwen_tokenizer/
   chat_template_qwen2.5_instruct.jinja) with add_generation_prompt=True, through Jinja2.
2. tests/fixtures/eval/zen_to_han_mojimoji.tsv: every BMP code point that `mojimoji.zen_to_han` (defaults)
   changes, with its output code points.

    pip install -r scripts/requirements-fixtures.txt   # Jinja2, mojimoji
    python3 scripts/igakuqa_prompt_fixtures.py --shared ../shared --out tests/fixtures/eval
"""
import argparse
import importlib.metadata
import json
import os

import jinja2
import mojimoji

QUESTION_IDS = ["112A1", "112B30", "112C57", "112C66", "113C66", "113F83", "116F74"]


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def user_turn(problem):
    # chatgpt.py: "問題: " + text, then "\n<letter>: <choice>" lines, the fixed a-e instruction with
    # N = len(answer), then "\n答え:". Numeric questions (no choices) get the stem only.
    text = "問題: " + problem["problem_text"]
    if not problem["choices"]:
        return text
    for letter, choice in zip("abcdefgh", problem["choices"]):
        text += "\n" + letter + ": " + choice
    text += "\n必ずa,b,c,d,eの中からちょうど" + str(len(problem["answer"])) + "個選んでください。"
    return text + "\n答え:"


def messages_for(problem, examples):
    messages = [{"role": "system", "content": "医師国家試験を解きます。"}]
    for ex in examples:
        messages.append({"role": "user", "content": user_turn(ex)})
        messages.append({"role": "assistant", "content": ",".join(ex["answer"])})
    messages.append({"role": "user", "content": user_turn(problem)})
    return messages


def find_question(data_dir, problem_id):
    exam, section = int(problem_id[:3]), problem_id[3]
    year = exam + 1906
    for q in read_jsonl(os.path.join(data_dir, "data", str(year), f"{exam}-{section}.jsonl")):
        if q["problem_id"] == problem_id:
            return q
    raise KeyError(problem_id)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", required=True, help="the shared/ folder")
    ap.add_argument("--out", required=True, help="tests/fixtures/eval")
    args = ap.parse_args()
    data_dir = os.path.join(args.shared, "igakuqa_data")
    examples = read_jsonl(os.path.join(data_dir, "scripts", "prompts", "prompt.jsonl"))
    with open(os.path.join(args.shared, "qwen_tokenizer", "chat_template_qwen2.5_instruct.jinja"), encoding="utf-8") as f:
        template = jinja2.Environment().from_string(f.read())

    cases = []
    for pid in QUESTION_IDS:
        messages = messages_for(find_question(data_dir, pid), examples)
        chat = template.render(messages=messages, add_generation_prompt=True, tools=None)
        cases.append({"problem_id": pid, "messages": messages, "qwen_chat": chat})
    with open(os.path.join(args.out, "prompts_reference.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
        f.write("\n")

    with open(os.path.join(args.out, "zen_to_han_mojimoji.tsv"), "w", encoding="utf-8") as f:
        f.write("# code point -> mojimoji.zen_to_han output code points (mojimoji %s, defaults)\n"
                % importlib.metadata.version("mojimoji"))
        for cp in range(0x10000):
            if 0xD800 <= cp < 0xE000:
                continue
            out = mojimoji.zen_to_han(chr(cp))
            if out != chr(cp):
                f.write("%04X\t%s\n" % (cp, " ".join("%04X" % ord(c) for c in out)))
    print("wrote", len(cases), "prompt cases")


if __name__ == "__main__":
    main()
