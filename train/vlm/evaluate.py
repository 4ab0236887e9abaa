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


def breakdown(correct: list, types: list[str], sources: list[str]) -> dict:
    """Accuracy per data source (organ), overall and per answer type: ``{source: {n, accuracy, option_letter,
    yes_no, n_option_letter, n_yes_no}}``."""
    out = {}
    for src in sorted(set(sources)):
        idx = [i for i, s in enumerate(sources) if s == src]
        row = {"n": len(idx), "accuracy": sum(correct[i] for i in idx) / len(idx)}
        for t in ("option_letter", "yes_no"):
            sub = [i for i in idx if types[i] == t]
            row[f"n_{t}"] = len(sub)
            row[t] = sum(correct[i] for i in sub) / len(sub) if sub else None
        out[src] = row
    return out


def paired_by_source(a: dict, b: dict) -> dict:
    """Two evaluations of the same questions (``eval.json`` dicts with ``ids``, ``sources`` and ``correct``):
    McNemar overall and per source, on the questions both answered (matched by id)."""
    if not a.get("ids") or not b.get("ids"):
        raise ValueError("paired comparison needs per-question ids in both evaluations (re-run train.vlm.evaluate)")
    ca, cb = dict(zip(a["ids"], a["correct"])), dict(zip(b["ids"], b["correct"]))
    src = dict(zip(a["ids"], a["sources"]))
    shared = [i for i in a["ids"] if i in cb]
    if not shared:
        raise ValueError("the two evaluations share no questions")
    out = {"all": paired_comparison([ca[i] for i in shared], [cb[i] for i in shared])}
    for s in sorted({src[i] for i in shared}):
        ids = [i for i in shared if src[i] == s]
        out[s] = paired_comparison([ca[i] for i in ids], [cb[i] for i in ids])
    return out


def answer_and_score(reasoner, rows, max_new_tokens: int, batch_size: int, images=None, progress: bool = False,
                     temperature: float = 0.0, seed: int | None = None, ground_options: bool = False,
                     ground_verdicts: bool = False):
    """Greedy (with ``temperature``: sampled, seeded) answers to ``rows`` (a dataset of closed questions:
    ``prompt``, ``answer``, ``answer_type``, ``options``, and ``image`` unless ``images`` replaces them),
    scored as the accuracy reward scores them: ``(results, correct)``. Columns are read whole, so each image
    is decoded once."""
    results = reasoner.chat_batch(list(images if images is not None else rows["image"]), list(rows["prompt"]),
                                  max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                                  temperature=temperature, seed=seed, ground_options=ground_options,
                                  ground_verdicts=ground_verdicts)
    correct = accuracy_reward([r.text for r in results], answer=list(rows["answer"]),
                              answer_type=list(rows["answer_type"]), options=list(rows["options"]))
    return results, correct


def closed_question_accuracy(model, processor, cfg, controls=("blank", "noise"), temperature: float = 0.0,
                             ground_options: bool = False, ground_verdicts: bool = False) -> dict:
    """Accuracy on held-out closed questions, greedy by default. With ``temperature`` the answers are
    sampled (seeded): the accuracy of the completions GRPO trains on, which can move the other way from
    the greedy one. ``ground_options``: multiple-choice letters grounded in the option the reasoning names
    (``pathvlm.vlm.option_grounding``); ``ground_verdicts``: yes/no answers grounded in the class the reasoning
    describes (``pathvlm.vlm.verdict_grounding``)."""
    from train.vlm.data import closed_questions, control_image

    rows = closed_questions(cfg, cfg.eval_split, cfg.eval_samples)
    reasoner = Reasoner(model.eval(), processor, name="eval")
    limits = dict(max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size, temperature=temperature,
                  seed=cfg.seed if temperature else None, ground_options=ground_options,
                  ground_verdicts=ground_verdicts)
    results, correct = answer_and_score(reasoner, rows, progress=True, **limits)
    types = list(rows["answer_type"])
    sources = list(rows["source"]) if "source" in rows.column_names else ["all"] * len(rows)
    out = {"n": len(rows), "accuracy": sum(correct) / len(rows),
           "by_type": {t: sum(c for c, ty in zip(correct, types) if ty == t) / max(1, types.count(t))
                       for t in ("option_letter", "yes_no")},
           "by_source": breakdown(correct, types, sources),
           "max_new_tokens": cfg.eval_max_new_tokens, "split": cfg.eval_split,
           "decoding": (f"sampled, temperature {temperature}" if temperature else "greedy")
           + (", options grounded" if ground_options else "") + (", verdicts grounded" if ground_verdicts else ""),
           "correct": [int(c) for c in correct],  # per question, for paired comparisons between stages
           "ids": list(rows["id"]) if "id" in rows.column_names else None, "sources": sources,
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


def pair_with_ungrounded(run, grounded: dict, raw_name: str, label: str | None = None,
                         what: str = "grounding") -> dict | None:
    """The paired comparison of a grounded evaluation with the ungrounded one of the same questions, when
    ``run/raw_name`` exists: written to ``paired[-SPLIT]-grounding[-LABEL].json`` in ``run`` and printed.
    ``what="verdicts"``: the evaluation with verdicts grounded against ``raw_name`` without them
    (``paired[-SPLIT][-grounded]-verdict-grounding[-LABEL].json``: not ``...-verdicts-LABEL``, the name of the
    evaluation's own comparison with ``--against``)."""
    import json

    raw_file = run / raw_name
    if raw_file.is_file():
        raw = json.loads(raw_file.read_text())
    elif raw_name == "eval.json" and label is None and (run / "results.json").is_file():  # the hook's own questions
        raw_file = run / "results.json"
        raw = json.loads(raw_file.read_text()).get("eval") or {}
    else:
        return None
    if raw.get("max_new_tokens") != grounded.get("max_new_tokens") or raw.get("n") != grounded.get("n"):
        return None
    after = "verdicts grounded" if what == "verdicts" else "options grounded"
    paired = {"before": str(raw_file), "after": after, "comparison": paired_by_source(raw, grounded)}
    stem = raw_name[:-len(".json")].replace("eval", "paired", 1)  # paired[-test][-LABEL]-grounding.json
    if label and stem.endswith(f"-{label}"):
        stem = stem[:-len(label) - 1]
    tag = "verdict-grounding" if what == "verdicts" else "grounding"
    name = f"{stem}-{tag}{'-' + label if label else ''}.json"
    (run / name).write_text(json.dumps(paired, indent=2))
    for src, c in paired["comparison"].items():
        print(f"  {label or run.name}: {raw_name} -> {after} [{src}]: n {c['n']}, gained {c['gained']}, "
              f"lost {c['lost']}, McNemar p {c['mcnemar_p']:.2g}")
    return paired


def output_name(split: str | None, temperature: float, grounded: bool = False, verdicts: bool = False) -> str:
    """``eval.json`` (the run's own split), ``eval-test.json`` (``--split test``), ``eval-t0.7.json`` (sampled),
    ``eval-test-grounded.json`` (``--ground-options``), ``eval-test-grounded-verdicts.json`` (and
    ``--ground-verdicts``)."""
    stem = "eval" + (f"-{split}" if split else "") + (f"-t{temperature:g}" if temperature else "")
    return stem + ("-grounded" if grounded else "") + ("-verdicts" if verdicts else "") + ".json"


def grounding_baseline(split: str | None, temperature: float, grounded: bool, verdicts: bool) -> tuple | None:
    """The evaluation a grounded one is paired with and what the grounding adds to it: ``(output name, what)``
    for :func:`pair_with_ungrounded` (verdicts: against the same options setting without them; options:
    against the ungrounded one), or None when nothing is grounded."""
    if verdicts:
        return output_name(split, temperature, grounded), "verdicts"
    if grounded:
        return output_name(split, temperature), "grounding"
    return None


def main(argv=None) -> int:
    """Re-run the evaluation hook on finished stages with other decoding limits (same questions):

        python -m train.vlm.evaluate runs/vlm/nano-align runs/vlm/nano-sft runs/vlm/nano-grpo --max-new-tokens 160

    writes ``eval.json`` in each run folder (``results.json`` keeps the in-training evaluation). A run folder
    without ``final/`` (a run cut short, or one trained elsewhere and brought back as its adapter) is
    evaluated as its starting model plus ``adapter.safetensors``.

    ``--split test`` reads another split than the run's hook did (writes ``eval-test.json``); ``--samples 0``
    asks every closed question of it. ``--against NAME`` also asks a bundled reasoner (``pathvlm-nano-v1``)
    the same questions, writes ``<run>/eval-<split>-<NAME>.json`` and prints the paired (McNemar) comparison,
    overall and per source, into ``<run>/paired-<split>-<NAME>.json``:

        python -m train.vlm.evaluate runs/vlm/nano-v2-grpo --split test --samples 0 --against pathvlm-nano-v1"""
    import argparse
    import json
    from pathlib import Path

    from train.vlm.config import VLMTrainConfig

    ap = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--samples", type=int, default=None, help="default: the run's eval_samples; 0: every question")
    ap.add_argument("--split", default=None, help="default: the run's eval_split (the hook's)")
    ap.add_argument("--against", default=None, help="a bundled reasoner asked the same questions (paired comparison)")
    ap.add_argument("--no-controls", action="store_true", help="skip the blank and noise image controls")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="sample at this temperature (seeded) instead of greedy decoding; writes eval-t{T}.json, "
                         "no image controls")
    ap.add_argument("--ground-options", action="store_true",
                    help="ground multiple-choice letters in the option the reasoning names; writes *-grounded.json "
                         "and, where the ungrounded evaluation of the same questions exists, the paired comparison "
                         "with it (paired[-SPLIT]-grounding[-AGAINST].json)")
    ap.add_argument("--ground-verdicts", action="store_true",
                    help="ground yes/no answers in the class the reasoning describes; writes *-verdicts.json and, where "
                         "the evaluation of the same questions without it exists, the paired comparison with it "
                         "(paired[-SPLIT][-grounded]-verdict-grounding[-AGAINST].json)")
    args = ap.parse_args(argv)
    grounded, verdicts = args.ground_options, args.ground_verdicts
    controls = () if args.temperature or args.no_controls else ("blank", "noise")

    def report(where, result, cfg):
        by_src = {k: round(v["accuracy"], 3) for k, v in result["by_source"].items()}
        print(f"{where}: accuracy {result['accuracy']:.3f} {result['by_type']} by source {by_src} (n={result['n']}, "
              f"split {cfg.eval_split}, max_new_tokens={cfg.eval_max_new_tokens}, {result['decoding']})")

    against = {}  # the bundled reasoner's answers per question set: asked once however many runs share it
    for run in map(Path, args.runs):
        saved = json.loads((run / "results.json").read_text())["config"]
        cfg = VLMTrainConfig(**saved)
        cfg.eval_max_new_tokens = args.max_new_tokens
        if args.samples is not None:
            cfg.eval_samples = args.samples
        if args.split:
            cfg.eval_split = args.split
        model, processor = load_run(run, cfg)
        result = closed_question_accuracy(model, processor, cfg, controls, temperature=args.temperature,
                                          ground_options=grounded, ground_verdicts=verdicts)
        (run / output_name(args.split, args.temperature, grounded, verdicts)).write_text(
            json.dumps(result, indent=2, default=str))
        report(run, result, cfg)
        baseline = grounding_baseline(args.split, args.temperature, grounded, verdicts)
        if baseline:
            pair_with_ungrounded(run, result, baseline[0], what=baseline[1])
        if args.against:
            from pathvlm.vlm.build import load_vlm

            key = (cfg.data, cfg.eval_split, cfg.eval_samples, tuple(cfg.sources), cfg.eval_max_new_tokens)
            if key not in against:
                against[key] = closed_question_accuracy(*load_vlm(args.against), cfg, controls,
                                                        temperature=args.temperature, ground_options=grounded,
                                                        ground_verdicts=verdicts)
                report(args.against, against[key], cfg)
            other = against[key]
            stem = output_name(args.split, args.temperature, grounded, verdicts)[:-len(".json")]
            (run / f"{stem}-{args.against}.json").write_text(json.dumps(other, indent=2, default=str))
            if baseline:
                raw = baseline[0][:-len(".json")] + f"-{args.against}.json"
                pair_with_ungrounded(run, other, raw, label=args.against, what=baseline[1])
            paired = {"before": args.against, "after": str(run), "split": cfg.eval_split,
                      "comparison": paired_by_source(other, result)}
            (run / f"{stem.replace('eval', 'paired', 1)}-{args.against}.json").write_text(json.dumps(paired, indent=2))
            for src, c in paired["comparison"].items():
                print(f"  {args.against} -> {run.name} [{src}]: n {c['n']}, gained {c['gained']}, lost {c['lost']}, "
                      f"McNemar p {c['mcnemar_p']:.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
