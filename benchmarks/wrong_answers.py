"""Regenerate a reasoner's wrong answers from a saved evaluation, to read what went wrong.

    python benchmarks/wrong_answers.py runs/vlm/nano-v3-sft/eval-test-grounded-pathvlm-nano-v2.json \
        --model pathvlm-nano --source oral_scc --kind yes_no --n 8 --ground-options

Takes the questions an evaluation (``python -m train.vlm.evaluate`` output, with per-question ids) marked wrong,
filtered by source and answer kind, asks ``--model`` them again one at a time (greedy, as the evaluation did) and
prints the question, the expected answer and the completion's last ``--tail`` characters. Greedy decoding makes
the completions the evaluation scored, up to batching numerics.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def wrong_questions(evaluation: dict, data: str, split: str, source: str | None, kind: str | None, n: int) -> list:
    """The first ``n`` questions the evaluation got wrong (of ``source`` and ``kind`` when given), as data rows."""
    from pathvlm.data.inspect import load_split

    ds = load_split(data, "grpo", split)
    index = {qid: i for i, qid in enumerate(ds["id"])}  # one column read; images are decoded only for the picks
    kinds = ds["answer_type"]
    picked = []
    for qid, ok, src in zip(evaluation["ids"], evaluation["correct"], evaluation["sources"]):
        if ok or (source and src != source) or (kind and kinds[index[qid]] != kind):
            continue
        picked.append(index[qid])
        if len(picked) == n:
            break
    return [ds[i] for i in picked]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("evaluation", help="an eval*.json written by python -m train.vlm.evaluate")
    ap.add_argument("--model", default="pathvlm-nano", help="the reasoner that gave those answers")
    ap.add_argument("--data", default="runs/data/nano_v2")
    ap.add_argument("--split", default="test")
    ap.add_argument("--source", default=None, help="only questions of this source (e.g. oral_scc)")
    ap.add_argument("--kind", default=None, choices=["option_letter", "yes_no"])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--tail", type=int, default=260, help="characters of each completion to print (0: all)")
    ap.add_argument("--ground-options", action="store_true", help="decode as the evaluation did with --ground-options")
    ap.add_argument("--ground-verdicts", action="store_true", help="decode as the evaluation did with --ground-verdicts")
    args = ap.parse_args(argv)
    evaluation = json.loads(Path(args.evaluation).read_text())
    if not evaluation.get("ids"):
        raise SystemExit("error: this evaluation has no per-question ids (re-run python -m train.vlm.evaluate)")
    from pathvlm.chat import load_reasoner

    reasoner = load_reasoner(args.model)
    for r in wrong_questions(evaluation, args.data, args.split, args.source, args.kind, args.n):
        image = r["image"]["bytes"] if isinstance(r["image"], dict) else r["image"]  # bytes or a decoded image
        question = r["prompt"][-1]["content"][-1]["text"]
        out = reasoner.chat([image], [{"role": "user", "content": question}], max_new_tokens=args.max_new_tokens,
                            ground_options=args.ground_options, ground_verdicts=args.ground_verdicts)
        text = out.text[-args.tail:] if args.tail else out.text
        print(f"--- {r['label']} | {question.splitlines()[0]} | expected {r['answer']}\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
