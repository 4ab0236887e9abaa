"""Rebuild the bundled models from their untrained baselines with the committed recipes and seeds, bundle them
into a scratch folder, evaluate them as their model cards were evaluated, and print each card figure beside the
rebuilt one.

    make reproduce                                       # all six (2 CPU cores: CLIP v4, v3 and v2 ~30 min each, v1
                                                         # ~15 min, reasoner v2 ~90 min, v1 ~80 min)
    python -m train.reproduce --only clip --data-v2 runs/data/nano_v2     # pathclip-nano (v4, two organs, UniCL)
    python -m train.reproduce --only clip-v3 --data-v2 runs/data/nano_v2  # pathclip-nano-v3 (two organs, augmented)
    python -m train.reproduce --only clip-v2 --data-v2 runs/data/nano_v2  # pathclip-nano-v2 (two organs)
    python -m train.reproduce --only clip-v1 --data runs/data/nano        # pathclip-nano-v1 (colon)
    python -m train.reproduce --only vlm --data-v2 runs/data/nano_v2      # pathvlm-nano (v2, files pathvlm-nano-v2.*)
    python -m train.reproduce --only vlm-v1 --data runs/data/nano         # pathvlm-nano-v1 (files pathvlm-nano.*)

Steps, all under ``--out`` (default ``runs/reproduce``; the shipped bundles are only read):

1. data: ``--data`` / ``--data-v2`` when they are built folders, else ``pathvlm data build data_recipes/nano.yaml``
   (``nano_v2.yaml``) into ``OUT/data/nano`` (``OUT/data/nano_v2``) (needs ``../shared/data``);
2. clip, clip-v3, clip-v2, clip-v1: ``pathvlm train clip --config train/recipes/clip/pathclip_nano_unicl.yaml``
   (``pathclip_nano_aug.yaml`` for v3, ``pathclip_nano_v2.yaml`` for v2, ``pathclip_nano.yaml`` for v1), all from ``pathclip-nano-untrained``, into ``OUT/clip/<name>``, then ``python -m train.clip.bundle
   ... --name <name> --out OUT/weights``, which evaluates the rebuilt fp16 weights with the card's code;
3. vlm, vlm-v1: the reasoner's stage recipes (v2: ``nano_v2_align`` -> ``nano_v2_sft`` from
   ``pathvlm-nano-v2-untrained``, as ``train/recipes/vlm/train_nano_v2.sh``; v1: ``nano_align`` -> ``nano_sft`` ->
   ``nano_grpo`` from ``pathvlm-nano-untrained``, as ``train_nano.sh``), each stage continuing the previous stage's
   adapter under ``OUT/vlm``; v1's align stage is re-asked 192 questions with 160 tokens and v2's last stage reads
   the held-out test split once (``--split test --samples 0 --no-controls``), as their cards were made; then
   ``python -m train.vlm.bundle ... --name <file name> --out OUT/weights``;
4. a table of card figure, rebuilt figure and difference, written to ``OUT/report.md`` and ``OUT/report.json``.

Training is seeded and runs with deterministic algorithms on the CPU, so on a CPU with the kernel level that made
a card (``cpu_capability`` in its provenance) the figures are held to the card's printed digit (exit code 1
otherwise) and the notes say whether the rebuilt weights are bitwise identical to the shipped ones. The
reasoner's figures are compared within ``--vlm-tolerance`` (default 0: to the digit; docs/reproduce.md gives the
spread measured across kernel levels).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

DATA_RECIPES = {"nano": "data_recipes/nano.yaml", "nano_v2": "data_recipes/nano_v2.yaml"}
# --only choice -> (bundled name, training recipe, data recipe key)
CLIP_MODELS = {"clip": ("pathclip-nano", "train/recipes/clip/pathclip_nano_unicl.yaml", "nano_v2"),
               "clip-v3": ("pathclip-nano-v3", "train/recipes/clip/pathclip_nano_aug.yaml", "nano_v2"),
               "clip-v2": ("pathclip-nano-v2", "train/recipes/clip/pathclip_nano_v2.yaml", "nano_v2"),
               "clip-v1": ("pathclip-nano-v1", "train/recipes/clip/pathclip_nano.yaml", "nano")}


@dataclass(frozen=True)
class VlmBuild:
    """How a bundled reasoner was made: what ``train_nano*.sh`` ran, and what its card evaluated."""
    label: str                            # the name users load it by
    file: str                             # its files in pathvlm/vlm/weights: <file>.safetensors, .results.json
    recipes: dict                         # stage -> recipe, in order
    data_key: str                         # DATA_RECIPES key
    align_eval: tuple | None = None       # (max_new_tokens, samples): the align stage re-asked after training
    test_read: bool = False               # the card holds the last stage's held-out test read


VLM_MODELS = {
    "vlm": VlmBuild("pathvlm-nano", "pathvlm-nano-v2",
                    {"align": "train/recipes/vlm/nano_v2_align.yaml", "sft": "train/recipes/vlm/nano_v2_sft.yaml"},
                    "nano_v2", test_read=True),
    "vlm-v1": VlmBuild("pathvlm-nano-v1", "pathvlm-nano",
                       {"align": "train/recipes/vlm/nano_align.yaml", "sft": "train/recipes/vlm/nano_sft.yaml",
                        "grpo": "train/recipes/vlm/nano_grpo.yaml"}, "nano", align_eval=(160, 192)),
}
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


def compare_clip(name: str, baseline: str, card: dict, rebuilt: dict, columns: list[tuple[str, str]]) -> list[dict]:
    """``columns``: (label, key in the results JSON) in the card's order (``train.clip.bundle.table_columns``)."""
    rows = []
    for model in (baseline, name):
        for label, key in columns:
            rows.append(compare_row(model, label, card.get(model, {}).get(key), rebuilt.get(model, {}).get(key)))
    return rows


def _get(row: dict, path: tuple):
    for k in path:
        row = row.get(k) if isinstance(row, dict) else None
    return row


def stage_rows(results) -> list[dict]:
    """The stage rows of a pathvlm-nano results JSON (a list before provenance was added, else ``stages``)."""
    return results["stages"] if isinstance(results, dict) else list(results)


TEST_METRICS = [("accuracy", ("accuracy",)), ("MCQ", ("by_type", "option_letter")), ("yes/no", ("by_type", "yes_no"))]


def compare_vlm(card, rebuilt, tolerance: float, name: str = "pathvlm-nano") -> list[dict]:
    """The stages' figures, then the held-out test read (overall, by kind, by source and kind) when the card has
    one. ``card`` and ``rebuilt``: results JSONs (a list of stage rows, or ``{"stages": [...], "test": ...}``)."""
    tol = tolerance or None  # 0: the same printed digits
    card_rows = {r["stage"]: r for r in stage_rows(card) if not r["stage"].startswith("ablation")}
    rows = []
    for r in stage_rows(rebuilt):
        c = card_rows.get(r["stage"], {})
        for label, path in VLM_METRICS:
            rows.append(compare_row(f"{name} {r['stage']}", label, _get(c, path), _get(r, path), tolerance=tol))
    card_test = card.get("test") if isinstance(card, dict) else None
    if card_test:
        test = (rebuilt.get("test") if isinstance(rebuilt, dict) else None) or {}
        for label, path in TEST_METRICS:
            rows.append(compare_row(f"{name} test", label, _get(card_test, path), _get(test, path), tolerance=tol))
        for src in card_test.get("by_source", {}):
            for label, key in (("accuracy", "accuracy"), ("MCQ", "option_letter"), ("yes/no", "yes_no")):
                path = ("by_source", src, key)
                rows.append(compare_row(f"{name} test {src}", label, _get(card_test, path), _get(test, path),
                                        tolerance=tol))
    return rows


def weights_diff(shipped: Path, rebuilt: Path) -> dict:
    """Whether two bundles' tensors are bitwise equal, and the largest absolute difference otherwise."""
    from safetensors.torch import load_file

    if not Path(shipped).is_file():
        return {"same_keys": False, "identical": False, "error": f"no shipped file {shipped}"}
    a, b = load_file(str(shipped)), load_file(str(rebuilt))
    if set(a) != set(b):
        return {"same_keys": False, "identical": False}
    diffs = {k: float((a[k].float() - b[k].float()).abs().max()) if a[k].numel() else 0.0 for k in a}
    worst = max(diffs, key=diffs.get) if diffs else None
    return {"same_keys": True, "identical": all(bool((a[k] == b[k]).all()) for k in a), "tensors": len(a),
            "tensors_differing": sum(1 for v in diffs.values() if v > 0), "max_abs_diff": diffs.get(worst, 0.0),
            "worst_tensor": worst}


def weights_note(label: str, wd: dict, where: str) -> str:
    """A report note: whether the rebuilt tensors are the shipped ones (``weights_diff``), and on which CPUs."""
    what = ("bitwise identical to the shipped file" if wd.get("identical") else wd["error"] if "error" in wd else
            f"{wd.get('tensors_differing')} of {wd.get('tensors')} tensors differ from the shipped file "
            f"(largest absolute difference {wd.get('max_abs_diff')} in {wd.get('worst_tensor')})")
    return f"{label}: {what}; {where}"


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
def ensure_data(data: str | None, out: Path, key: str = "nano") -> str:
    flag = "--data" if key == "nano" else "--data-v2"
    if data and (Path(data) / "checksums.json").is_file():
        return data
    if data:
        raise SystemExit(f"{flag} {data}: not a built recipe folder (no checksums.json); leave it out to build one")
    target = out / "data" / key
    if (target / "checksums.json").is_file():
        return str(target)
    from pathvlm.data.build import build_recipe
    from pathvlm.data.config import load_recipe

    recipe = DATA_RECIPES[key]
    print(f"[reproduce] building {recipe} into {target}", flush=True)
    build_recipe(load_recipe(recipe), target, recipe_path=recipe)
    return str(target)


def _fresh(folder: Path, resume: bool) -> None:
    if folder.exists() and not resume:
        shutil.rmtree(folder)


def run_clip(choice: str, data: str, out: Path, resume: bool, weights_dir: Path,
             shipped_dir: Path) -> tuple[list[dict], list[str], dict]:
    from pathvlm.clip.registry import NAMED_MODELS
    from train.clip import bundle
    from train.clip.config import load_config
    from train.clip.trainer import train_clip

    name, recipe, _ = CLIP_MODELS[choice]
    run = out / "clip" / name
    _fresh(run, resume)
    cfg = load_config(recipe, {"data": data, "output_dir": str(run)})
    print(f"[reproduce] pathvlm train clip --config {recipe} --set data={data} --set output_dir={run}", flush=True)
    train_clip(cfg)
    print(f"[reproduce] python -m train.clip.bundle {run} --data {data} --name {name} --out {weights_dir}", flush=True)
    bundle.main([str(run), "--data", data, "--name", name, "--out", str(weights_dir), "--recipe", recipe])
    card = json.loads((shipped_dir / f"{name}.results.json").read_text())
    rebuilt = json.loads((weights_dir / f"{name}.results.json").read_text())
    columns = bundle.table_columns(vars(cfg))
    rows = compare_clip(name, NAMED_MODELS[name].baseline, card, rebuilt, columns)
    wd = weights_diff(shipped_dir / f"{name}.safetensors", weights_dir / f"{name}.safetensors")
    machine, where = machines(card)
    notes = [weights_note(f"{name} weights (fp16)", wd, where)]
    history = json.loads((run / "history.json").read_text())["history"]
    last = history[-1] if history else {}
    extra = {"weights": wd, "training_time_eval": last, **machine}
    notes.append(f"{name}: training-time evaluation of the last epoch (fp32, in the training process, its "
                 f"{cfg.eval_split} split): " + ", ".join(f"{label} {fmt(last.get(key))}" for label, key in columns))
    return rows, notes, extra


def run_vlm(choice: str, data: str, out: Path, resume: bool, weights_dir: Path, shipped_dir: Path,
            tolerance: float) -> tuple[list[dict], list[str], dict]:
    from train.vlm import bundle
    from train.vlm import evaluate as vlm_eval
    from train.vlm.config import load_config
    from train.vlm.trainer import run_stage

    build = VLM_MODELS[choice]
    dirs, adapter = [], None
    for stage, recipe in build.recipes.items():
        run = out / "vlm" / f"{build.file}-{stage}"
        _fresh(run, resume)
        overrides = {"data": data, "output_dir": str(run)}
        if adapter is not None:
            overrides["init_adapter"] = str(adapter)
        sets = " ".join(f"--set {k}={v}" for k, v in overrides.items())
        print(f"[reproduce] pathvlm train {stage} --config {recipe} {sets}", flush=True)
        run_stage(load_config(recipe, overrides, stage=stage))
        dirs.append(run)
        adapter = run / "adapter.safetensors"
    if build.align_eval:  # as train/recipes/vlm/train_nano.sh: the align stage asked 192 questions with 160 tokens
        tokens, samples = build.align_eval
        vlm_eval.main([str(dirs[0]), "--max-new-tokens", str(tokens), "--samples", str(samples)])
    if build.test_read:  # as the v2 card: the last stage reads every closed question of the test split once
        tokens = json.loads((dirs[-1] / "results.json").read_text())["config"]["eval_max_new_tokens"]  # 160 for v2
        args = [str(dirs[-1]), "--split", "test", "--samples", "0", "--no-controls", "--max-new-tokens", str(tokens)]
        print(f"[reproduce] python -m train.vlm.evaluate {' '.join(args)}", flush=True)
        vlm_eval.main(args)
    args = [*map(str, dirs), "--out", str(weights_dir), "--name", build.file, "--recipes", *build.recipes.values()]
    print(f"[reproduce] python -m train.vlm.bundle {' '.join(args)}", flush=True)
    bundle.main(args)
    card = json.loads((shipped_dir / f"{build.file}.results.json").read_text())
    rebuilt = json.loads((weights_dir / f"{build.file}.results.json").read_text())
    rows = compare_vlm(card, rebuilt, tolerance, name=build.label)
    wd = weights_diff(shipped_dir / f"{build.file}.safetensors", weights_dir / f"{build.file}.safetensors")
    machine, where = machines(card)
    notes = [weights_note(f"{build.label} weights (fp16 adapter)", wd, where),
             f"{build.label}: compared within {tolerance:g}" + (" (to the printed digit)" if not tolerance else "")]
    return rows, notes, {"weights": wd, **machine}


def other_cpu(extra: dict) -> list[str]:
    """The rebuilt models whose card was made on another CPU (kernel level, or model where both are recorded)."""
    def differs(e):
        if not e.get("card_cpu_capability"):
            return False  # unrecorded: cannot tell
        return e["card_cpu_capability"] != e.get("cpu_capability") or \
            bool(e.get("card_cpu_model") and e["card_cpu_model"] != e.get("cpu_model"))
    return [choice for choice, e in extra.items() if differs(e)]


def machines(card: dict) -> tuple[dict, str]:
    """The CPU that made a card and the one rebuilding it (kernel level and model), and a sentence saying so."""
    from train.provenance import environment

    env = environment()
    m = {"card_cpu_capability": _get(card, ("provenance", "environment", "cpu_capability")),
         "card_cpu_model": _get(card, ("provenance", "environment", "cpu_model")),
         "cpu_capability": env.get("cpu_capability"), "cpu_model": env.get("cpu_model")}

    def cpu(level, model):
        level = level or "unrecorded"
        return f"{'an' if level[0].lower() in 'aeiou' else 'a'} {level} CPU" + (f" ({model})" if model else "")

    return m, (f"the card was made on {cpu(m['card_cpu_capability'], m['card_cpu_model'])}, this rebuild on "
               f"{cpu(m['cpu_capability'], m['cpu_model'])}")


def main(argv=None) -> int:
    from pathvlm.clip.registry import WEIGHTS_DIR as CLIP_WEIGHTS
    from pathvlm.vlm.build import WEIGHTS_DIR as VLM_WEIGHTS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=[*CLIP_MODELS, *VLM_MODELS], help="rebuild one model (default: all six)")
    ap.add_argument("--out", default="runs/reproduce", help="scratch folder for data, runs, bundles and the report")
    ap.add_argument("--data", default=None, help="a built data_recipes/nano.yaml folder, for the v1 models "
                    "(default: build one in OUT)")
    ap.add_argument("--data-v2", default=None, help="a built data_recipes/nano_v2.yaml folder, for the v2 models "
                    "(default: build one in OUT)")
    ap.add_argument("--resume", action="store_true", help="continue runs already in OUT (default: start them afresh)")
    ap.add_argument("--vlm-tolerance", type=float, default=0.0,
                    help="largest difference accepted for the reasoner's accuracies (default 0: the printed digit)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights_dir = out / "weights"
    rows, notes, extra = [], [], {}
    for choice, (_, _, key) in CLIP_MODELS.items():
        if args.only in (None, choice):
            data = ensure_data(args.data_v2 if key == "nano_v2" else args.data, out, key)
            r, n, e = run_clip(choice, data, out, args.resume, weights_dir, CLIP_WEIGHTS)
            rows, notes, extra[choice] = rows + r, notes + n, e
    for choice, build in VLM_MODELS.items():
        if args.only in (None, choice):
            data = ensure_data(args.data_v2 if build.data_key == "nano_v2" else args.data, out, build.data_key)
            r, n, e = run_vlm(choice, data, out, args.resume, weights_dir, VLM_WEIGHTS, args.vlm_tolerance)
            rows, notes, extra[choice] = rows + r, notes + n, e
    text = report_markdown(rows, notes)
    (out / "report.md").write_text(text)
    from train.provenance import environment, git_commit

    (out / "report.json").write_text(json.dumps({"rows": rows, "notes": notes, "commit": git_commit(),
                                                 "environment": environment(), **extra}, indent=1, default=str))
    print(text)
    bad = [r for r in rows if not r["match"]]
    print(f"[reproduce] {len(rows) - len(bad)} of {len(rows)} figures match the cards; report: {out / 'report.md'}")
    other = other_cpu(extra)
    if bad and other:
        print(f"[reproduce] {', '.join(other)}: card made on another CPU; to the digit holds on the CPU that made a "
              "card, and docs/reproduce.md gives the differences measured across CPUs")
    return 1 if bad else 0


def cli(argv=None) -> int:
    """``main`` with the project's errors (no ../shared data, a bad recipe) as one line instead of a traceback."""
    from pathvlm.errors import PathVLMError

    try:
        return main(argv)
    except PathVLMError as e:
        print(f"reproduce: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
