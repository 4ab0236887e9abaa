"""Where a stage's closed-question errors come from: perception or reasoning.

Each held-out question (the evaluation hook's seeded subset) is answered greedily; a wrong answer is
sorted by its reasoning block, matched against the knowledge base's observations for each class:

- ``wrong_tissue``: the think block describes another class than the tile's (a perception error);
- ``wrong_letter`` / ``wrong_verdict``: it describes the right class, then names the wrong option
  letter or the wrong yes/no (a reasoning error, what verifiable-reward RL can fix). A wrong letter is
  split further where the reasoning picks an option ("This fits X, which is option L", or "L. X: yes"
  in the option-scan format tried at commit 1613377): ``wrong_lookup`` (X is the tile's class, but L is not its option) and
  ``wrong_conclusion`` (X is another class);
- ``no_description``: no class's observations appear.

    python -m train.vlm.error_analysis runs/vlm/nano-sft [--samples 192] [--max-new-tokens 160] [--reclassify]

A class's reasoning is recognised in any of its texts, the general one and those per magnification (the oral
mucosa classes have 100x and 400x texts). ``--reclassify`` sorts the wrong answers an earlier run saved again.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path


def described_class(text: str, observations: dict[str, str | list[str]]) -> str | None:
    """The class whose knowledge-base observations open the completion's reasoning, or None. A class may have
    several texts (its general observations and one per magnification): any of them counts."""
    def variants(obs):
        return [obs] if isinstance(obs, str) else list(obs)

    hits = [label for label, obs in observations.items() if any(o and o.split(".")[0] in text for o in variants(obs))]
    return hits[0] if len(hits) == 1 else None


def class_observations(kb) -> dict[str, list[str]]:
    """Every class's observation texts: the general one and one per magnification the knowledge base gives."""
    return {label: [kb.observations(label)] + [kb.observations(label, m) for m in (e.get("magnifications") or {})]
            for label, e in kb.classes.items()}


def realign(rows: list[dict], wrong: list[dict]) -> list[dict]:
    """The rows the saved wrong answers belong to: ``wrong`` is a subsequence of ``rows`` in order, matched by
    question text and reference answer."""
    out, k = [], 0
    for w in wrong:
        while k < len(rows) and (rows[k]["question"], rows[k]["answer"]) != (w["question"], w["answer"]):
            k += 1
        if k == len(rows):
            raise ValueError("errors.json does not match the run's questions: re-run without --reclassify")
        out.append(rows[k])
        k += 1
    return out


# "fits X, which is option L" (the nano data), or the option scan ("B. colon adenocarcinoma: yes, so the answer is B")
SCAN_RE = re.compile(r"\b([A-Z])\. ([^.:]+): yes\b")
CONCLUSION_RE = re.compile(r"fits (.+?), which is option ([A-Z])\b")


def classify(row: dict, text: str, correct: bool, observations: dict[str, str]) -> str:
    if correct:
        return "correct"
    seen = described_class(text, observations)
    if seen is None:
        return "no_description"
    if seen != row["label"]:
        return "wrong_tissue"
    if row["answer_type"] != "option_letter":
        return "wrong_verdict"
    scan, found = SCAN_RE.search(text), CONCLUSION_RE.search(text)
    if (scan is None and found is None) or not row.get("options"):
        return "wrong_letter"
    named, letter = (scan.group(2), scan.group(1)) if scan else (found.group(1), found.group(2))
    named = named.strip().lower()
    if named != row["label"].lower():
        return "wrong_conclusion"
    index = ord(letter) - ord("A")
    right = index < len(row["options"]) and row["options"][index].lower() == named
    return "wrong_letter" if right else "wrong_lookup"  # right lookup, then another letter in <answer>


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--samples", type=int, default=None, help="default: the run's eval_samples")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--reclassify", action="store_true",
                    help="sort the wrong answers saved in errors.json again (no model, no generation)")
    args = ap.parse_args(argv)

    from pathvlm.chat import Reasoner
    from pathvlm.data.knowledge import KnowledgeBase
    from train.vlm.config import VLMTrainConfig
    from train.vlm.data import closed_questions
    from train.vlm.evaluate import answer_and_score, load_run

    run = Path(args.run)
    cfg = VLMTrainConfig(**json.loads((run / "results.json").read_text())["config"])
    rows = closed_questions(cfg, cfg.eval_split, args.samples or cfg.eval_samples)
    kb = KnowledgeBase.load()
    observations = class_observations(kb)
    if args.reclassify:
        saved = json.loads((run / "errors.json").read_text())
        table = [{"question": p[-1]["content"][-1]["text"], "answer": a, "label": lab, "answer_type": t, "options": o}
                 for p, a, lab, t, o in zip(rows["prompt"], rows["answer"], rows["label"], rows["answer_type"],
                                            rows["options"])]
        for w, row in zip(saved["wrong"], realign(table, saved["wrong"])):
            w["kind"] = classify(row, w["completion"], False, observations)
        kinds = ["correct"] * (saved["n"] - len(saved["wrong"])) + [w["kind"] for w in saved["wrong"]]
        return write_summary(run, saved["n"], saved["accuracy"], kinds, saved["wrong"])
    model, processor = load_run(run, cfg)
    results, correct = answer_and_score(Reasoner(model, processor, name="errors"), rows, args.max_new_tokens,
                                        cfg.eval_batch_size, progress=True)
    texts = [r.text for r in results]
    meta = [{"label": lab, "answer_type": t, "options": o}
            for lab, t, o in zip(rows["label"], rows["answer_type"], rows["options"])]
    kinds = [classify(m, t, bool(c), observations) for m, t, c in zip(meta, texts, correct)]
    wrong = [{"question": p[-1]["content"][-1]["text"], "answer": a, "kind": k, "completion": t}
             for p, a, k, t in zip(rows["prompt"], rows["answer"], kinds, texts) if k != "correct"]
    return write_summary(run, len(rows), sum(correct) / len(rows), kinds, wrong)


def write_summary(run: Path, n: int, accuracy: float, kinds: list[str], wrong: list[dict]) -> int:
    """``errors.json``: the counts per kind, the first wrong answer of each kind, every wrong answer; printed too."""
    examples = {}
    for w in wrong:
        examples.setdefault(w["kind"], w["completion"])
    summary = {"n": n, "accuracy": accuracy, "kinds": dict(Counter(kinds)), "examples": examples, "wrong": wrong}
    (run / "errors.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("examples", "wrong")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
