#!/usr/bin/env python3
"""Prints the IgakuQA exam sizes (questions and points possible per section A-F) as the C++ table in
src/eval/igakuqa_data.cpp (known_exam_size), from the IgakuQA data files.

    python3 scripts/igakuqa_exam_sizes.py --data ../shared/igakuqa_data
"""
import argparse
import json
import os


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/igakuqa_data", help="IgakuQA data folder (holds data/)")
    args = parser.parse_args()
    for year in range(2018, 2023):
        exam = year - 1906
        counts, points = [], []
        for section in "ABCDEF":
            path = os.path.join(args.data, "data", str(year), f"{exam}-{section}.jsonl")
            with open(path, encoding="utf-8") as f:
                records = [json.loads(line) for line in f if line.strip()]
            counts.append(len(records))
            points.append(sum(int(r["points"]) for r in records))
        print("        {%d, {%s}, {%s}},  // %d questions, %d points" %
              (year, ", ".join(map(str, counts)), ", ".join(map(str, points)), sum(counts), sum(points)))


if __name__ == "__main__":
    main()
