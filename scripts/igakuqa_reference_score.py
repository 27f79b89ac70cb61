#!/usr/bin/env python3
"""Independent re-implementation of the official IgakuQA scorer (jungokasai/IgakuQA scripts/evaluate_main.py,
as described in docs/reference/igakuqa.md §4) plus the MHLW pass criteria (§5).

It scores a baseline_results-style folder (<year>/<exam>-<section>_<name>.jsonl) against the data folder and
writes per-section, per-year and pooled numbers as JSON. The C++ scorer's test compares itself with this output.

    python3 scripts/igakuqa_reference_score.py \
        --data-dir ../shared/igakuqa_data \
        --predictions ../shared/igakuqa_data/baseline_results --name chatgpt \
        --out tests/fixtures/eval/chatgpt_baseline_reference.json

Standard library only.
"""
import argparse
import json
import os
import unicodedata

YEARS = [2018, 2019, 2020, 2021, 2022]
SECTIONS = "ABCDEF"
REQUIRED = "BE"
# (必修 B+E minimum, 一般 A+C+D+F minimum); at most 3 prohibited choices.
THRESHOLDS = {2018: (160, 208), 2019: (160, 209), 2020: (158, 217), 2021: (160, 209), 2022: (158, 214)}
MAX_KINKI = 3


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def is_correct(problem_id, prediction, answer):
    # evaluate_main.py: sorted(prediction.split(',')) vs sorted(answer), with two hard-coded exceptions.
    pred = sorted(prediction.split(","))
    gold = sorted(answer)
    if problem_id == "116A71":
        return True
    if problem_id == "112B30" and (pred == ["a"] or pred == ["d"]):
        return True
    return pred == gold


def kinki_letters(entries):
    letters = set()
    for entry in entries:
        for ch in unicodedata.normalize("NFKC", entry).strip().lower():
            if "a" <= ch <= "h":
                letters.add(ch)
    return letters


def score(data_dir, predictions_dir, name):
    years = []
    pooled = {"points": 0, "possible": 0, "correct": 0, "count": 0}
    for year in YEARS:
        exam = year - 1906
        row = {"year": year, "exam": exam, "sections": {}, "points": 0, "possible": 0, "correct": 0, "count": 0,
               "required_points": 0, "required_possible": 0, "general_points": 0, "general_possible": 0,
               "kinki_selected": 0}
        for section in SECTIONS:
            stem = f"{exam}-{section}"
            questions = read_jsonl(os.path.join(data_dir, "data", str(year), stem + ".jsonl"))
            metadata = read_jsonl(os.path.join(data_dir, "data", str(year), stem + "_metadata.jsonl"))
            preds = read_jsonl(os.path.join(predictions_dir, str(year), f"{stem}_{name}.jsonl"))
            # check_jsonls: same length, same problem_id at every position.
            assert len(questions) == len(metadata) == len(preds)
            for q, m, p in zip(questions, metadata, preds):
                assert q["problem_id"] == m["problem_id"] == p["problem_id"]
            sec = {"score": 0, "total": 0, "correct": 0, "count": 0}
            for q, m, p in zip(questions, metadata, preds):
                points = int(q["points"])
                ok = is_correct(q["problem_id"], p["prediction"], q["answer"])
                sec["count"] += 1
                sec["total"] += points
                if ok:
                    sec["correct"] += 1
                    sec["score"] += points
                if set(p["prediction"].split(",")) & kinki_letters(m["kinki"]):
                    row["kinki_selected"] += 1
            row["sections"][section] = sec
            row["points"] += sec["score"]
            row["possible"] += sec["total"]
            row["correct"] += sec["correct"]
            row["count"] += sec["count"]
            part = "required" if section in REQUIRED else "general"
            row[part + "_points"] += sec["score"]
            row[part + "_possible"] += sec["total"]
        row["normalized_score"] = row["points"] / row["possible"]
        required_min, general_min = THRESHOLDS[year]
        row["passed"] = (row["required_points"] >= required_min and row["general_points"] >= general_min
                         and row["kinki_selected"] <= MAX_KINKI)
        years.append(row)
        for key in pooled:
            pooled[key] += row[key]
    pooled["normalized_score"] = pooled["points"] / pooled["possible"]
    pooled["year_mean_normalized_score"] = sum(r["normalized_score"] for r in years) / len(years)
    pooled["accuracy"] = pooled["correct"] / pooled["count"]
    return {"model": name, "years": years, "total": pooled}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--predictions", required=True, help="baseline_results-style folder")
    ap.add_argument("--name", default="chatgpt")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    result = score(args.data_dir, args.predictions, args.name)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=1)
        f.write("\n")
    t = result["total"]
    print(f"{t['points']} / {t['possible']} = {t['normalized_score']:.4f}")
    for r in result["years"]:
        print(r["year"], r["points"], r["possible"], f"{r['normalized_score']:.4f}", r["required_points"],
              r["general_points"], r["kinki_selected"], "pass" if r["passed"] else "fail")


if __name__ == "__main__":
    main()
