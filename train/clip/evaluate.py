"""Evaluation during PathCLIP training: zero-shot on held-out groups (and unseen classes), retrieval R@k."""
from __future__ import annotations

import numpy as np
import torch

from pathvlm.embed import embed_images, embed_texts
from pathvlm.metrics import accuracy, balanced_accuracy, class_precision_at_k, recall_at_k
from pathvlm.zeroshot import ZeroShotClassifier, load_prompt_set
from train.clip.towers import freeze_locked_batchnorm


def unique_images(rows: list[dict]) -> list[dict]:
    """One row per image (a labelled image has several captions: ids ``<image>-c0``, ``-c1``...)."""
    seen, out = set(), []
    for r in rows:
        key = r["id"].rsplit("-c", 1)[0]
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


@torch.no_grad()
def zero_shot(model, tokenizer, preprocess, rows, task: str, device="cpu", feats=None) -> dict:
    """``feats``: the image embeddings of ``unique_images(rows)``, in order, when the caller has them already
    (several tasks over one split embed its images once)."""
    rows = unique_images(rows)
    ps = load_prompt_set(task)
    keep = [i for i, r in enumerate(rows) if ps.class_of(r["label"])]  # labels outside the task's classes: not scored
    rows = [rows[i] for i in keep]
    if not rows:
        return {}
    clf = ZeroShotClassifier(model, tokenizer, ps, device=device)
    if feats is None:
        feats = embed_images(model, preprocess, [r["image"] for r in rows], num_workers=0, device=device)
    else:
        feats = feats[keep]
    pred = [clf.class_names[i] for i in clf.probabilities(feats).argmax(-1).tolist()]
    truth = [ps.class_of(r["label"]) for r in rows]
    return {"balanced_accuracy": balanced_accuracy(truth, pred), "accuracy": accuracy(truth, pred), "n": len(rows)}


@torch.no_grad()
def retrieval(model, tokenizer, preprocess, rows, device="cpu", feats=None) -> dict:
    rows = unique_images(rows)
    if len(rows) < 2:
        return {}
    img = (feats if feats is not None else
           embed_images(model, preprocess, [r["image"] for r in rows], num_workers=0, device=device)).numpy()
    txt = embed_texts(model, tokenizer, [r["text"] for r in rows], device=device).numpy()
    sim = txt @ img.T
    labels = [r["label"] for r in rows]
    out = {f"t2i_R@{k}": recall_at_k(sim, k) for k in (1, 5, 10)}
    out.update({f"i2t_R@{k}": recall_at_k(sim.T, k) for k in (1, 5, 10)})
    out["t2i_class_P@5"] = class_precision_at_k(sim, labels, labels, 5)
    out["n"] = len(rows)
    out["chance_R@5"] = min(1.0, 5 / len(rows))
    return out


def evaluate(model, tokenizer, preprocess, heldout, task, unseen=None, unseen_task=None, device="cpu",
             extra_tasks=()) -> dict:
    was_training = model.training
    model.eval()
    metrics = {}
    # the held-out images are embedded once for every task (the same numbers as embedding them per task)
    images = unique_images(heldout)
    feats = embed_images(model, preprocess, [r["image"] for r in images], num_workers=0, device=device) \
        if images else None
    for k, v in zero_shot(model, tokenizer, preprocess, heldout, task, device, feats).items():
        metrics[f"zeroshot/{k}"] = v
    for extra in extra_tasks:
        for k, v in zero_shot(model, tokenizer, preprocess, heldout, extra, device, feats).items():
            metrics[f"zeroshot[{extra}]/{k}"] = v
    for k, v in retrieval(model, tokenizer, preprocess, heldout, device, feats).items():
        metrics[f"retrieval/{k}"] = v
    if unseen and unseen_task:
        for k, v in zero_shot(model, tokenizer, preprocess, unseen, unseen_task, device).items():
            metrics[f"unseen_zeroshot/{k}"] = v
    model.train(was_training)
    if was_training:
        freeze_locked_batchnorm(model.visual)
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in metrics.items()}
