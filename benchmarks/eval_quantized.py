"""Accuracy cost of ``--quantize int8``: the reasoner in fp32 and in int8 answer the same held-out closed
questions (greedy), scored as the training hook scores them, compared question by question with an exact
McNemar test (the discordant pairs under a two-sided binomial test, scipy).

    python benchmarks/eval_quantized.py [--model pathvlm-nano] [--data runs/data/nano_v2] [--samples 192]
                                        [--modes int8 q8_0] [--ground-options] [--ground-verdicts]
                                        [--json out.json]

Needs the nano v2 data (``pathvlm data build data_recipes/nano_v2.yaml``, which needs ../shared/data). The questions are
the evaluation hook's: the seeded subset of the ``grpo`` test split's closed questions (multiple choice with 4 options,
and yes/no), greedy, ``--max-new-tokens`` (160, as the bundled model card), batch 16. Target: int8 within 1
accuracy point of fp32. ``q8_0`` (llama.cpp) answers one question at a time. About 4 minutes per variant on a
quiet 2-core CPU for 192 questions (pathvlm-nano v2, 2 threads).
"""
from __future__ import annotations

import argparse
import json
import os
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pathvlm-nano", help="a bundled reasoner or a save_pretrained folder")
    ap.add_argument("--data", default="runs/data/nano_v2", help="a built nano-style recipe folder (grpo/ test split)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--samples", type=int, default=192)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--modes", nargs="+", default=["int8", "q8_0"], choices=["int8", "q8_0"],
                    help="quantised variants to compare with fp32 (q8_0 needs llama-cpp-python)")
    ap.add_argument("--ground-options", action="store_true",
                    help="every variant decodes with option grounding (pathvlm.vlm.option_grounding), as chat and serve do")
    ap.add_argument("--ground-verdicts", action="store_true",
                    help="every variant grounds yes/no verdicts in the class the reasoning describes "
                         "(pathvlm.vlm.verdict_grounding), as chat and serve do")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    import torch

    from pathvlm.chat import Reasoner
    from pathvlm.evals.stats import mcnemar_exact
    from pathvlm.vlm.build import load_vlm
    from pathvlm.vlm.quantize import quantize_language_model, weight_bytes
    from train.vlm.config import VLMTrainConfig
    from train.vlm.data import closed_questions
    from train.vlm.evaluate import answer_and_score

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = VLMTrainConfig(data=args.data)
    rows = closed_questions(cfg, args.split, args.samples)
    types = list(rows["answer_type"])
    print(f"{args.model}: {len(rows)} held-out closed questions from {args.data} ({args.split}); greedy, "
          f"{args.max_new_tokens} new tokens, batch {args.batch_size}{', options grounded' if args.ground_options else ''}"
          f"{', verdicts grounded' if args.ground_verdicts else ''}; "
          f"load average {os.getloadavg()[0]:.1f}")
    out = {"model": args.model, "data": args.data, "n": len(rows), "max_new_tokens": args.max_new_tokens,
           "ground_options": args.ground_options, "ground_verdicts": args.ground_verdicts,
           "load_average_start": os.getloadavg(), "modes": {}}
    for mode in ("none", *args.modes):
        model, processor = load_vlm(args.model)
        quantize_language_model(model, mode, tokenizer=processor.tokenizer)
        reasoner = Reasoner(model.eval(), processor, name=args.model)
        start = time.perf_counter()
        results, correct = answer_and_score(reasoner, rows, args.max_new_tokens, args.batch_size, progress=True,
                                            ground_options=args.ground_options,
                                            ground_verdicts=args.ground_verdicts)
        seconds = time.perf_counter() - start
        out["modes"][mode] = {
            "accuracy": sum(correct) / len(rows), "seconds": seconds, "weight_bytes": weight_bytes(model),
            "by_type": {t: sum(c for c, ty in zip(correct, types) if ty == t) / max(1, types.count(t))
                        for t in ("option_letter", "yes_no")},
            "correct": [int(c) for c in correct], "answers": [r.answer for r in results]}
        print(f"  {'fp32' if mode == 'none' else mode}: accuracy {out['modes'][mode]['accuracy']:.3f} "
              f"{out['modes'][mode]['by_type']} ({seconds:.0f} s)")
        del model, reasoner
    fp = out["modes"]["none"]
    out["paired"] = {}
    for mode in args.modes:
        q = out["modes"][mode]
        test = mcnemar_exact(fp["correct"], q["correct"])
        same = sum(a.strip().lower() == b.strip().lower() for a, b in zip(fp["answers"], q["answers"])) / len(rows)
        out["paired"][mode] = {**test, "same_answer": same, "accuracy_change": q["accuracy"] - fp["accuracy"]}
    out["load_average_end"] = os.getloadavg()
    print(f"\n| model | accuracy | MCQ | yes/no | LM weight MB |\n|---|---|---|---|---|")
    for mode, r in out["modes"].items():
        print(f"| {'fp32' if mode == 'none' else mode} | {r['accuracy']:.3f} | {r['by_type']['option_letter']:.3f} | "
              f"{r['by_type']['yes_no']:.3f} | {r['weight_bytes'] / 1e6:.0f} |")
    for mode, p in out["paired"].items():
        print(f"\n{mode} vs fp32 on the same {len(rows)} questions: gained {p['gained']}, lost {p['lost']}, "
              f"accuracy change {p['accuracy_change']:+.3f}, exact McNemar p = {p['p_value']:.3g}; "
              f"same final answer on {p['same_answer']:.1%}; within 1 point: {abs(p['accuracy_change']) <= 0.01}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
