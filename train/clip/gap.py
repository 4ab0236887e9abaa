"""Is a PathCLIP's zero-shot error on some classes a fitting problem or a generalisation problem?

    python -m train.clip.gap runs/clip/pathclip-nano-v2/final --data runs/data/nano_v2 --source oral_scc --task colon_oral

For the tiles of one source (e.g. the oral mucosa tiles of nano_v2) it prints, on the training split and on a
held-out split (``--split``, default val: never the test split while choosing a recipe):

- zero-shot balanced accuracy with the task's prompt set, restricted to the source's classes;
- a logistic-regression probe on the frozen image embeddings (fit on train, scored on both), balanced, for a
  few regularisation strengths: how well the image features separate the classes at all.

High training-split zero-shot with a low held-out one means the model fits its training tiles and does not
generalise (more epochs will not help; more data or regularisation might). A low probe on held-out tiles means
the image features do not separate the classes there, whatever the text side does.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from pathvlm.errors import PathVLMError


def embed_split(model, preprocess, data: str, split: str, source: str):
    from pathvlm.embed import embed_images
    from train.clip.data import read_rows
    from train.clip.evaluate import unique_images

    rows = unique_images(read_rows(data, split, only_sources=[source]))
    if not rows:
        raise PathVLMError(f"{data}: no '{source}' rows in the {split} split")
    feats = embed_images(model, preprocess, [r["image"] for r in rows], num_workers=0)
    return feats, [r["label"] for r in rows]


def measure(source: str, data: str, task: str, model_source: str, split: str = "val", cs=(0.1, 1.0, 10.0)) -> dict:
    from sklearn.linear_model import LogisticRegression

    from pathvlm.clip.factory import create_clip
    from pathvlm.metrics import balanced_accuracy
    from pathvlm.zeroshot import ZeroShotClassifier, load_prompt_set

    model, preprocess, tokenizer = create_clip(model_source)
    model.eval()
    ps = load_prompt_set(task)
    f_train, y_train = embed_split(model, preprocess, data, "train", source)
    f_held, y_held = embed_split(model, preprocess, data, split, source)
    wanted = sorted({ps.class_of(y) for y in y_train + y_held if ps.class_of(y)})
    if len(wanted) < 2:
        raise PathVLMError(f"prompt set {task} names fewer than two of {source}'s labels")
    # zero-shot among the source's own classes only (the question: does it tell these apart?)
    sub = type(ps)(**{**vars(ps), "classes": {c: ps.classes[c] for c in wanted}})
    clf = ZeroShotClassifier(model, tokenizer, sub)

    def zero_shot(feats, labels):
        pred = [clf.class_names[i] for i in clf.probabilities(feats).argmax(-1).tolist()]
        return balanced_accuracy([ps.class_of(y) for y in labels], pred)

    out = {"model": model_source, "source": source, "task": task, "held_out_split": split,
           "n": {"train": len(y_train), split: len(y_held)},
           "per_class": {"train": {c: y_train.count(c) for c in sorted(set(y_train))},
                         split: {c: y_held.count(c) for c in sorted(set(y_held))}},
           "zero_shot": {"train": zero_shot(f_train, y_train), split: zero_shot(f_held, y_held)}, "probe": {}}
    xt, xh = f_train.numpy(), f_held.numpy()
    for c in cs:
        lr = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit(xt, np.array(y_train))
        out["probe"][f"C={c:g}"] = {"train": balanced_accuracy(y_train, list(lr.predict(xt))),
                                    split: balanced_accuracy(y_held, list(lr.predict(xh)))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.clip.gap", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="any create_clip source (a run's final/ folder, a bundled name)")
    ap.add_argument("--data", required=True, help="a built recipe folder with clip/ shards")
    ap.add_argument("--source", required=True, help="the data source whose tiles to look at (e.g. oral_scc)")
    ap.add_argument("--task", required=True, help="the zero-shot prompt set (e.g. colon_oral)")
    ap.add_argument("--split", default="val", help="the held-out split (default val)")
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    try:
        r = measure(args.source, args.data, args.task, args.model, args.split)
    except PathVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = args.split
    print(f"{args.model} on {args.source} ({r['n']['train']} train / {r['n'][s]} {s} tiles; {r['per_class'][s]})")
    print(f"| measure | train | {s} |\n|---|---|---|")
    print(f"| zero-shot `{args.task}` (the source's classes) | {r['zero_shot']['train']:.3f} | {r['zero_shot'][s]:.3f} |")
    for k, v in r["probe"].items():
        print(f"| linear probe, {k} | {v['train']:.3f} | {v[s]:.3f} |")
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
