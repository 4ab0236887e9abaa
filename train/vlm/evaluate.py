"""The stages' evaluation hook: closed questions (option letter, yes/no) on held-out groups, greedy and
batched, scored with the same answer extraction as the accuracy reward; plus the image-dependence
controls (blank and noise images: how often the answer changes, how often it abstains)."""
from __future__ import annotations

import math
from collections import Counter

from pathvlm.chat import CANNOT_DETERMINE, Reasoner
from pathvlm.rewards import accuracy_reward


def _entropy(values) -> float:
    counts = Counter(values)
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def paired_comparison(before: list[int], after: list[int]) -> dict:
    """Two stages scored on the same questions: how many each gets right that the other misses, and the
    exact two-sided McNemar p-value (a binomial test on those discordant questions; scipy, ``pathvlm.evals.stats``)."""
    from pathvlm.evals.stats import mcnemar_exact

    try:
        t = mcnemar_exact(before, after)
    except ValueError:
        raise ValueError(f"paired comparison needs the same questions ({len(before)} vs {len(after)})") from None
    return {"n": t["n"], "gained": t["gained"], "lost": t["lost"],
            "accuracy_change": (t["gained"] - t["lost"]) / t["n"], "mcnemar_p": t["p_value"]}


def answer_and_score(reasoner, rows, max_new_tokens: int, batch_size: int, images=None, progress: bool = False,
                     temperature: float = 0.0, seed: int | None = None):
    """Greedy (with ``temperature``: sampled, seeded) answers to ``rows`` (a dataset of closed questions:
    ``prompt``, ``answer``, ``answer_type``, ``options``, and ``image`` unless ``images`` replaces them),
    scored as the accuracy reward scores them: ``(results, correct)``. Columns are read whole, so each image
    is decoded once."""
    results = reasoner.chat_batch(list(images if images is not None else rows["image"]), list(rows["prompt"]),
                                  max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                                  temperature=temperature, seed=seed)
    correct = accuracy_reward([r.text for r in results], answer=list(rows["answer"]),
                              answer_type=list(rows["answer_type"]), options=list(rows["options"]))
    return results, correct


def closed_question_accuracy(model, processor, cfg, controls=("blank", "noise"), temperature: float = 0.0) -> dict:
    """Accuracy on held-out closed questions, greedy by default. With ``temperature`` the answers are
    sampled (seeded): the accuracy of the completions GRPO trains on, which can move the other way from
    the greedy one."""
    from train.vlm.data import closed_questions, control_image

    rows = closed_questions(cfg, cfg.eval_split, cfg.eval_samples)
    reasoner = Reasoner(model.eval(), processor, name="eval")
    limits = dict(max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size, temperature=temperature,
                  seed=cfg.seed if temperature else None)
    results, correct = answer_and_score(reasoner, rows, progress=True, **limits)
    types = list(rows["answer_type"])
    out = {"n": len(rows), "accuracy": sum(correct) / len(rows),
           "by_type": {t: sum(c for c, ty in zip(correct, types) if ty == t) / max(1, types.count(t))
                       for t in ("option_letter", "yes_no")},
           "max_new_tokens": cfg.eval_max_new_tokens, "split": cfg.eval_split,
           "decoding": f"sampled, temperature {temperature}" if temperature else "greedy",
           "correct": [int(c) for c in correct],  # per question, for paired comparisons between stages
           "examples": [{"question": p[-1]["content"][-1]["text"], "answer": a, "completion": r.text}
                        for p, a, r in zip(list(rows["prompt"])[:3], rows["answer"], results)]}
    answers = [res.answer.strip().lower() for res in results]
    for kind in controls:
        ctrl, ok = answer_and_score(reasoner, rows, images=[control_image(kind, seed=i) for i in range(len(rows))],
                                    **limits)
        got = [res.answer.strip().lower() for res in ctrl]
        out[f"control_{kind}"] = {
            "answer_changed": sum(a != b for a, b in zip(answers, got)) / len(rows),
            "abstained": sum(CANNOT_DETERMINE in g for g in got) / len(rows),
            "accuracy": sum(ok) / len(rows),
            "answer_entropy_bits": _entropy(got), "real_image_answer_entropy_bits": _entropy(answers),
            "most_common": Counter(got).most_common(3)}
    return out


def load_run(run, cfg):
    """A finished stage's merged ``final/`` folder, else ``cfg.model`` with the run's ``adapter.safetensors``."""
    from pathvlm.errors import PathVLMError
    from pathvlm.vlm.adapters import apply_bundle
    from pathvlm.vlm.build import load_vlm

    if (run / "final").is_dir():
        return load_vlm(str(run / "final"))
    if not (run / "adapter.safetensors").is_file():
        raise PathVLMError(f"{run}: neither final/ nor adapter.safetensors to evaluate")
    model, processor = load_vlm(cfg.model)
    apply_bundle(model, str(run / "adapter.safetensors"))
    return model, processor


def main(argv=None) -> int:
    """Re-run the evaluation hook on finished stages with other decoding limits (same questions):

        python -m train.vlm.evaluate runs/vlm/nano-align runs/vlm/nano-sft runs/vlm/nano-grpo --max-new-tokens 160

    writes ``eval.json`` in each run folder (``results.json`` keeps the in-training evaluation). A run folder
    without ``final/`` (a run cut short, or one trained elsewhere and brought back as its adapter) is
    evaluated as its starting model plus ``adapter.safetensors``."""
    import argparse
    import json
    from pathlib import Path

    from train.vlm.config import VLMTrainConfig

    ap = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--samples", type=int, default=None, help="default: the run's eval_samples")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="sample at this temperature (seeded) instead of greedy decoding; writes eval-t{T}.json, "
                         "no image controls")
    args = ap.parse_args(argv)
    for run in map(Path, args.runs):
        saved = json.loads((run / "results.json").read_text())["config"]
        cfg = VLMTrainConfig(**saved)
        cfg.eval_max_new_tokens = args.max_new_tokens
        if args.samples:
            cfg.eval_samples = args.samples
        model, processor = load_run(run, cfg)
        controls = () if args.temperature else ("blank", "noise")
        result = closed_question_accuracy(model, processor, cfg, controls, temperature=args.temperature)
        name = f"eval-t{args.temperature:g}.json" if args.temperature else "eval.json"
        (run / name).write_text(json.dumps(result, indent=2, default=str))
        print(f"{run}: accuracy {result['accuracy']:.3f} {result['by_type']} (n={result['n']}, "
              f"max_new_tokens={cfg.eval_max_new_tokens}, {result['decoding']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
