"""Rebuild the bundled models from their untrained baselines with the committed recipes and seeds, bundle them
into a scratch folder, evaluate them as their model cards were evaluated, and print each card figure beside the
rebuilt one.

    make reproduce                                       # both models (CLIP ~15 min, reasoner ~80 min, 2 CPU cores)
    python -m train.reproduce --only clip --data runs/data/nano
    python -m train.reproduce --only vlm --out runs/reproduce

Steps, all under ``--out`` (default ``runs/reproduce``; the shipped bundles are only read):

1. data: ``--data`` when it is a built folder, else ``pathvlm data build data_recipes/nano.yaml`` into
   ``OUT/data/nano`` (needs ``../shared/data``);
2. clip: ``pathvlm train clip --config train/recipes/clip/pathclip_nano.yaml`` (from ``pathclip-nano-untrained``)
   into ``OUT/clip/pathclip-nano``, then ``python -m train.clip.bundle ... --out OUT/weights``, which evaluates
   the rebuilt fp16 weights with the card's code;
3. vlm: the align, SFT and GRPO recipes (from ``pathvlm-nano-untrained``: the shipped pathclip-nano tower,
   SmolLM2-135M-Instruct and a seeded projector), each stage continuing the previous stage's adapter under
   ``OUT/vlm``, the align stage re-asked 192 questions with 160 tokens, then ``python -m train.vlm.bundle
   ... --out OUT/weights``;
4. a table of card figure, rebuilt figure and difference, written to ``OUT/report.md`` and ``OUT/report.json``.

On the CPU the CLIP training is deterministic, so its figures must equal the card's to the printed digit (exit
code 1 otherwise). The reasoner is compared within ``--vlm-tolerance`` (GRPO samples completions).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

DATA_RECIPE = "data_recipes/nano.yaml"
CLIP_RECIPE = "train/recipes/clip/pathclip_nano.yaml"
VLM_RECIPES = {"align": "train/recipes/vlm/nano_align.yaml", "sft": "train/recipes/vlm/nano_sft.yaml",
               "grpo": "train/recipes/vlm/nano_grpo.yaml"}
CLIP_NAME, VLM_NAME = "pathclip-nano", "pathvlm-nano"
# (label, key in the results JSON) in the card's column order
CLIP_METRICS = [("zero-shot balanced acc.", "zeroshot/balanced_accuracy"),
                ("same, unseen class names", "zeroshot[lc25000_colon_unseen_names]/balanced_accuracy"),
                ("text-to-image R@5", "retrieval/t2i_R@5"), ("text-to-image class P@5", "retrieval/t2i_class_P@5"),
                ("image-to-text R@5", "retrieval/i2t_R@5"), ("unseen HGSC balanced acc.", "unseen_zeroshot/balanced_accuracy")]
VLM_METRICS = [("accuracy", ("accuracy",)), ("MCQ", ("by_type", "option_letter")), ("yes/no", ("by_type", "yes_no")),
               ("blank: answer changed", ("blank_answer_changed",)), ("blank: accuracy", ("blank_accuracy",)),
               ("noise: answer changed", ("noise_answer_changed",)), ("noise: accuracy", ("noise_accuracy",)),
               ("abstained (blank)", ("blank_abstained",)), ("abstained (noise)", ("noise_abstained",))]


# ----------------------------------------------------------------------------- comparing
def compare_row(model: str, label: str, card, rebuilt, digits: int = 3, tolerance: float | None = None) -> dict:
    """One line of the report. ``tolerance`` None: equal when both print the same to ``digits`` digits."""
    row = {"model": model, "figure": label, "card": card, "rebuilt": rebuilt}
    if card is None or rebuilt is None:
        row.update(diff=None, match=card is None and rebuilt is None)
        return row
    row["diff"] = rebuilt - card
    row["match"] = (f"{card:.{digits}f}" == f"{rebuilt:.{digits}f}") if tolerance is None else \
        abs(row["diff"]) <= tolerance + 1e-12
    return row


def compare_clip(card: dict, rebuilt: dict) -> list[dict]:
    rows = []
    for model in (f"{CLIP_NAME}-untrained", CLIP_NAME):
        for label, key in CLIP_METRICS:
            rows.append(compare_row(model, label, card.get(model, {}).get(key), rebuilt.get(model, {}).get(key)))
    return rows


def _get(row: dict, path: tuple):
    for k in path:
        row = row.get(k) if isinstance(row, dict) else None
    return row


def stage_rows(results) -> list[dict]:
    """The stage rows of a pathvlm-nano results JSON (a list before provenance was added, else ``stages``)."""
    return results["stages"] if isinstance(results, dict) else list(results)


def compare_vlm(card, rebuilt, tolerance: float) -> list[dict]:
    card_rows = {r["stage"]: r for r in stage_rows(card) if not r["stage"].startswith("ablation")}
    rows = []
    for r in stage_rows(rebuilt):
        c = card_rows.get(r["stage"], {})
        for label, path in VLM_METRICS:
            rows.append(compare_row(f"{VLM_NAME} {r['stage']}", label, _get(c, path), _get(r, path), tolerance=tolerance))
    return rows


def weights_diff(shipped: Path, rebuilt: Path) -> dict:
    """Whether two bundles' tensors are bitwise equal, and the largest absolute difference otherwise."""
    from safetensors.torch import load_file

    a, b = load_file(str(shipped)), load_file(str(rebuilt))
    if set(a) != set(b):
        return {"same_keys": False, "identical": False}
    diffs = {k: float((a[k].float() - b[k].float()).abs().max()) if a[k].numel() else 0.0 for k in a}
    worst = max(diffs, key=diffs.get) if diffs else None
    return {"same_keys": True, "identical": all(bool((a[k] == b[k]).all()) for k in a), "tensors": len(a),
            "tensors_differing": sum(1 for v in diffs.values() if v > 0), "max_abs_diff": diffs.get(worst, 0.0),
            "worst_tensor": worst}


def fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}f}"


def report_markdown(rows: list[dict], notes: list[str]) -> str:
    lines = ["| model | figure | card | rebuilt | difference | match |", "|---|---|---|---|---|---|"]
    for r in rows:
        diff = "–" if r["diff"] is None else f"{r['diff']:+.3f}"
        lines.append(f"| {r['model']} | {r['figure']} | {fmt(r['card'])} | {fmt(r['rebuilt'])} | {diff} | "
                     f"{'yes' if r['match'] else 'NO'} |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


# ----------------------------------------------------------------------------- steps
def ensure_data(data: str | None, out: Path) -> str:
    if data and (Path(data) / "checksums.json").is_file():
        return data
    if data:
        raise SystemExit(f"--data {data}: not a built recipe folder (no checksums.json); leave it out to build one")
    target = out / "data" / "nano"
    if (target / "checksums.json").is_file():
        return str(target)
    from pathvlm.data.build import build_recipe
    from pathvlm.data.config import load_recipe

    print(f"[reproduce] building {DATA_RECIPE} into {target}", flush=True)
    build_recipe(load_recipe(DATA_RECIPE), target, recipe_path=DATA_RECIPE)
    return str(target)


def _fresh(folder: Path, resume: bool) -> None:
    if folder.exists() and not resume:
        shutil.rmtree(folder)


def run_clip(data: str, out: Path, resume: bool, weights_dir: Path, shipped_dir: Path) -> tuple[list[dict], list[str], dict]:
    from train.clip import bundle
    from train.clip.config import load_config
    from train.clip.trainer import train_clip

    run = out / "clip" / CLIP_NAME
    _fresh(run, resume)
    cfg = load_config(CLIP_RECIPE, {"data": data, "output_dir": str(run)})
    print(f"[reproduce] pathvlm train clip --config {CLIP_RECIPE} --set data={data} --set output_dir={run}", flush=True)
    train_clip(cfg)
    print(f"[reproduce] python -m train.clip.bundle {run} --data {data} --out {weights_dir}", flush=True)
    bundle.main([str(run), "--data", data, "--out", str(weights_dir), "--recipe", CLIP_RECIPE])
    card = json.loads((shipped_dir / f"{CLIP_NAME}.results.json").read_text())
    rebuilt = json.loads((weights_dir / f"{CLIP_NAME}.results.json").read_text())
    rows = compare_clip(card, rebuilt)
    wd = weights_diff(shipped_dir / f"{CLIP_NAME}.safetensors", weights_dir / f"{CLIP_NAME}.safetensors")
    notes = [f"{CLIP_NAME} weights (fp16): " + ("bitwise identical to the shipped file" if wd.get("identical") else
             f"{wd.get('tensors_differing')} of {wd.get('tensors')} tensors differ from the shipped file "
             f"(largest absolute difference {wd.get('max_abs_diff')} in {wd.get('worst_tensor')})")]
    history = json.loads((run / "history.json").read_text())["history"]
    last = history[-1] if history else {}
    extra = {"weights": wd, "training_time_eval": last}
    notes.append("training-time evaluation of the last epoch (fp32, in the training process): " + ", ".join(
        f"{label} {fmt(last.get(key))}" for label, key in CLIP_METRICS))
    return rows, notes, extra


def run_vlm(data: str, out: Path, resume: bool, weights_dir: Path, shipped_dir: Path,
            tolerance: float) -> tuple[list[dict], list[str], dict]:
    from train.vlm import bundle
    from train.vlm import evaluate as vlm_eval
    from train.vlm.config import load_config
    from train.vlm.trainer import run_stage

    dirs, adapter = [], None
    for stage, recipe in VLM_RECIPES.items():
        run = out / "vlm" / f"nano-{stage}"
        _fresh(run, resume)
        overrides = {"data": data, "output_dir": str(run)}
        if stage != "align":
            overrides["init_adapter"] = str(adapter)
        sets = " ".join(f"--set {k}={v}" for k, v in overrides.items())
        print(f"[reproduce] pathvlm train {stage} --config {recipe} {sets}", flush=True)
        run_stage(load_config(recipe, overrides, stage=stage))
        dirs.append(run)
        adapter = run / "adapter.safetensors"
    # as train/recipes/vlm/train_nano.sh: the align stage asked the 192 questions with 160 tokens
    vlm_eval.main([str(dirs[0]), "--max-new-tokens", "160", "--samples", "192"])
    bundle.main([*map(str, dirs), "--out", str(weights_dir), "--recipes", *VLM_RECIPES.values()])
    card = json.loads((shipped_dir / f"{VLM_NAME}.results.json").read_text())
    rebuilt = json.loads((weights_dir / f"{VLM_NAME}.results.json").read_text())
    rows = compare_vlm(card, rebuilt, tolerance)
    return rows, [f"{VLM_NAME}: compared within {tolerance} (the reasoner's rebuild is not bitwise: see "
                  "docs/reproduce.md)"], {}


def main(argv=None) -> int:
    from pathvlm.clip.registry import WEIGHTS_DIR as CLIP_WEIGHTS
    from pathvlm.vlm.build import WEIGHTS_DIR as VLM_WEIGHTS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["clip", "vlm"], help="rebuild one model (default: both)")
    ap.add_argument("--out", default="runs/reproduce", help="scratch folder for data, runs, bundles and the report")
    ap.add_argument("--data", default=None, help="a built data_recipes/nano.yaml folder (default: build one in OUT)")
    ap.add_argument("--resume", action="store_true", help="continue runs already in OUT (default: start them afresh)")
    ap.add_argument("--vlm-tolerance", type=float, default=0.03,
                    help="largest difference accepted for the reasoner's figures (accuracies on 192 questions)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights_dir = out / "weights"
    data = ensure_data(args.data, out)
    rows, notes, extra = [], [], {}
    if args.only in (None, "clip"):
        r, n, e = run_clip(data, out, args.resume, weights_dir, CLIP_WEIGHTS)
        rows, notes, extra["clip"] = rows + r, notes + n, e
    if args.only in (None, "vlm"):
        r, n, e = run_vlm(data, out, args.resume, weights_dir, VLM_WEIGHTS, args.vlm_tolerance)
        rows, notes, extra["vlm"] = rows + r, notes + n, e
    text = report_markdown(rows, notes)
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps({"rows": rows, "notes": notes, **extra}, indent=1, default=str))
    print(text)
    bad = [r for r in rows if not r["match"]]
    print(f"[reproduce] {len(rows) - len(bad)} of {len(rows)} figures match the cards; report: {out / 'report.md'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
