"""What verdict grounding does to a reasoner's yes/no answers, paired, on one split of a built recipe.

    python benchmarks/verdict_grounding.py --model pathvlm-nano --data runs/data/nano_v2 --split val

Asks ``--model`` every yes/no question of the split twice, greedy and batched as the evaluation hook does:
without and with verdict grounding (``pathvlm.vlm.verdict_grounding``). Prints, per source and overall, the
accuracy of each, the questions gained and lost (exact McNemar p), how many verdicts the description decided
(the reasoning's features pointed to one class, so grounding could force "those" or "not"), and how many
answers the grounded run changed. ``--json`` also writes the figures and every question's two completions.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def decided(text: str, question: str, vocab) -> bool:
    """Whether the reasoning before the verdict sentence points to one class (grounding could force the verdict)."""
    from pathvlm.vlm.verdict_grounding import VERDICT_OPENING, asked_class, shown_class

    if asked_class(question, vocab) is None or VERDICT_OPENING not in text:
        return False
    return shown_class(text.split(VERDICT_OPENING)[0], vocab) is not None


def summarise(sources, before: list[int], after: list[int], changed: list[bool], decides: list[bool]) -> dict:
    from pathvlm.evals.stats import mcnemar_exact

    out = {}
    for src in ["all", *sorted(set(sources))]:
        idx = [i for i, s in enumerate(sources) if src in ("all", s)]
        t = mcnemar_exact([before[i] for i in idx], [after[i] for i in idx])
        out[src] = {"n": len(idx), "accuracy_before": sum(before[i] for i in idx) / len(idx),
                    "accuracy_after": sum(after[i] for i in idx) / len(idx), "gained": t["gained"],
                    "lost": t["lost"], "mcnemar_p": t["p_value"], "decided": sum(decides[i] for i in idx),
                    "answers_changed": sum(changed[i] for i in idx)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="pathvlm-nano")
    ap.add_argument("--data", default="runs/data/nano_v2", help="a built recipe with a grpo dataset")
    ap.add_argument("--split", default="val")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", default=None, help="also write the figures and completions here")
    args = ap.parse_args(argv)

    from pathvlm.chat import load_reasoner, split_reasoning
    from pathvlm.data.inspect import load_split
    from pathvlm.evals.consistency import vocabulary
    from pathvlm.rewards import accuracy_reward

    ds = load_split(args.data, "grpo", args.split).filter(lambda t: t == "yes_no", input_columns="answer_type")
    if not len(ds):
        raise SystemExit(f"error: no yes/no questions in {args.data} grpo {args.split}")
    reasoner = load_reasoner(args.model)
    images, prompts, answers = list(ds["image"]), list(ds["prompt"]), list(ds["answer"])
    runs = {}
    for grounded in (False, True):
        res = reasoner.chat_batch(images, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                  progress=True, ground_verdicts=grounded)
        texts = [r.text for r in res]
        runs[grounded] = (texts, [int(c) for c in accuracy_reward(texts, answer=answers, answer_type="yes_no")])
    (raw, before), (grounded_texts, after) = runs[False], runs[True]
    vocab = vocabulary()
    questions = [p[-1]["content"][-1]["text"] for p in prompts]
    decides = [decided(t, q, vocab) for t, q in zip(raw, questions)]
    changed = [split_reasoning(a)[1].lower() != split_reasoning(b)[1].lower()
               for a, b in zip(raw, grounded_texts)]
    table = summarise(list(ds["source"]), before, after, changed, decides)
    print(f"{args.model}, {args.data} grpo {args.split}, yes/no questions, greedy, {args.max_new_tokens} new tokens, "
          f"batch {args.batch_size}")
    print("| source | n | accuracy | verdicts grounded | gained / lost | McNemar p | description decided | answers changed |")
    print("|---|---|---|---|---|---|---|---|")
    for src, r in table.items():
        print(f"| {src} | {r['n']} | {r['accuracy_before']:.3f} | {r['accuracy_after']:.3f} | {r['gained']} / "
              f"{r['lost']} | {r['mcnemar_p']:.2g} | {r['decided']} | {r['answers_changed']} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        items = [{"id": i, "source": s, "question": q, "answer": a, "ungrounded": t0, "grounded": t1}
                 for i, s, q, a, t0, t1 in zip(ds["id"], ds["source"], questions, answers, raw, grounded_texts)]
        Path(args.json).write_text(json.dumps({"args": vars(args), "table": table, "items": items}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
