"""Accuracy on multiple-choice questions by the correct option's letter, from saved evaluations.

    python benchmarks/option_letters.py runs/vlm/nano-v3-sft/eval-test-pathvlm-nano-v2.json \
        runs/vlm/nano-v3-sft/eval-test-grounded-pathvlm-nano-v2.json --data runs/data/nano_v2 --split test

Reads each evaluation's per-question ids and correctness (``python -m train.vlm.evaluate`` writes them) and the
questions' answers from the data build's ``grpo/<split>`` shards, and prints one row per file: accuracy and count
for each letter, by source. A model whose letter lookup works scores about the same on every letter; one that
writes the letter its class usually had in training scores low on the others (docs/models.md#option-grounding).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def answers(data: str, split: str) -> dict[str, tuple[str, str, str]]:
    """id -> (answer, answer_type, source) for the closed questions of ``split``."""
    from pathvlm.data.inspect import load_split

    ds = load_split(data, "grpo", split).select_columns(["id", "answer", "answer_type", "source"])
    return {r["id"]: (r["answer"], r["answer_type"], r["source"]) for r in ds}


def by_letter(evaluation: dict, truth: dict) -> dict:
    """{source or "all": {letter: [right, asked]}} over the multiple-choice questions of one evaluation."""
    if not evaluation.get("ids"):
        raise SystemExit("error: this evaluation has no per-question ids (re-run python -m train.vlm.evaluate)")
    table: dict = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for qid, ok in zip(evaluation["ids"], evaluation["correct"]):
        answer, kind, source = truth[qid]
        if kind != "option_letter":
            continue
        for key in (source, "all"):
            table[key][answer][0] += int(ok)
            table[key][answer][1] += 1
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("evaluations", nargs="+", help="eval*.json files written by python -m train.vlm.evaluate")
    ap.add_argument("--data", default="runs/data/nano_v2")
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)
    truth = answers(args.data, args.split)
    letters = sorted({a for a, kind, _ in truth.values() if kind == "option_letter"})
    print("| evaluation | source | " + " | ".join(f"{L}" for L in letters) + " |")
    print("|---|---|" + "---|" * len(letters))
    for path in args.evaluations:
        table = by_letter(json.loads(Path(path).read_text()), truth)
        for key in sorted(table, key=lambda k: (k != "all", k)):
            cells = [f"{table[key][L][0]}/{table[key][L][1]}" if table[key][L][1] else "-" for L in letters]
            print(f"| `{Path(path).name}` | {key} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
