"""False alarms of the self-consistency reader and the garbled-word rate on texts that are right by construction.

    python benchmarks/consistency_references.py --data runs/data/nano [--split test]

Reads the reference targets of a built recipe (the ``sft`` conversations' assistant targets, reasoning
included, and the ``align`` captions and reports) and runs ``pathvlm.evals.consistency`` and
``pathvlm.evals.garbled`` on them, with each tile's organ as the harness gives it. Every one of these texts
is consistent and made of real words, so every flag is a false alarm of the reader. A few seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.data import load_split  # noqa: E402
from evals.generative import item_organ  # noqa: E402
from evals.tasks import Task  # noqa: E402
from pathvlm.data.knowledge import KnowledgeBase  # noqa: E402
from pathvlm.evals.consistency import consistency_metrics  # noqa: E402
from pathvlm.evals.garbled import Lexicon, garbled_metrics  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/data/nano", help="a built recipe folder with sft/ and align/")
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)
    kb, task = KnowledgeBase.load(), Task(name="references", kind="report", dataset={})
    out = {}
    for dataset in ("sft", "align"):
        items = load_split({"kind": "built", "build_dir": args.data, "dataset": dataset}, args.split)
        texts = [it["text"] or it["answer"] for it in items]
        questions = [it["question"] for it in items]
        m = consistency_metrics(texts, questions, [it["options"] or None for it in items],
                                [item_organ(it, task, kb) for it in items], [it["id"] for it in items])
        g = garbled_metrics(texts, Lexicon.default(extra=questions))
        out[dataset] = {"n": m["n"], "inconsistent_rate": m["inconsistent_rate"], "reasons": m["reasons"],
                        "n_with_organ": m["n_with_organ"], "examples": m["examples"], **g}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
