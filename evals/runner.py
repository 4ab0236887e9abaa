"""``pathvlm eval``: run pinned tasks on a model; write results.json, report.md and plots.

Every result records the model fingerprint, the data hash, the seed and the settings; the same
command twice gives identical numbers on the CPU (tested).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from evals.data import load_split
from evals.html_report import render_html
from evals.markdown_report import render_report
from evals.tasks import Task, data_hash, load_task
from pathvlm.clip.factory import create_clip
from pathvlm.clip.folder import model_fingerprint
from pathvlm.embed import embed_images, embed_texts
from pathvlm.errors import PathVLMError
from pathvlm.evals import calibration, probe
from pathvlm.metrics import accuracy, balanced_accuracy, class_precision_at_k, recall_at_k, weighted_f1
from pathvlm.zeroshot import ZeroShotClassifier, load_prompt_set


def _classification_metrics(truth, pred, conf=None) -> dict:
    out = {"accuracy": accuracy(truth, pred), "balanced_accuracy": balanced_accuracy(truth, pred),
           "weighted_f1": weighted_f1(truth, pred), "n": len(truth)}
    if conf is not None:
        correct = [t == p for t, p in zip(truth, pred)]
        out["ece"] = calibration.expected_calibration_error(conf, correct)
        out["selective_accuracy@80%"] = calibration.selective_accuracy(conf, correct, 0.8)
    return out


def run_zeroshot(task: Task, model, tok, preprocess, items, plots: Path) -> dict:
    ps = load_prompt_set(task.prompts)
    items = [it for it in items if ps.class_of(it["label"])]  # the prompt set's dataset_labels fold finer labels in
    if not items:
        raise PathVLMError(f"task {task.name}: no samples with a label among {list(ps.classes)}")
    feats = embed_images(model, preprocess, [it["image"] for it in items], num_workers=0)
    truth = [ps.class_of(it["label"]) for it in items]
    out = {}
    for mode in (["ensemble", "single_prompt"] if task.compare_single_prompt else ["ensemble"]):
        clf = ZeroShotClassifier(model, tok, ps, ensemble=mode == "ensemble")
        probs = clf.probabilities(feats).numpy()
        pred = [clf.class_names[i] for i in probs.argmax(1)]
        out[mode] = _classification_metrics(truth, pred, probs.max(1))
        if mode == "ensemble":
            out["confusion"] = {"classes": clf.class_names,
                                "matrix": [[sum(1 for t, p in zip(truth, pred) if t == a and p == b) for b in clf.class_names]
                                           for a in clf.class_names]}
            out["reliability"] = calibration.reliability_bins(probs.max(1), [t == p for t, p in zip(truth, pred)])
            _plot_confusion(out["confusion"], plots / f"{task.name}_confusion.png", task.name)
            _plot_reliability(out["reliability"], plots / f"{task.name}_reliability.png", task.name)
    # paraphrase sensitivity: each template alone
    per_template = []
    for t in ps.templates:
        single = type(ps)(ps.name, ps.classes, [t])
        clf = ZeroShotClassifier(model, tok, single)
        pred = [clf.class_names[i] for i in clf.probabilities(feats).argmax(-1).tolist()]
        per_template.append(balanced_accuracy(truth, pred))
    out["per_template_balanced_accuracy"] = {"mean": float(np.mean(per_template)), "std": float(np.std(per_template)),
                                             "min": float(np.min(per_template)), "max": float(np.max(per_template))}
    return out


def run_probe(task: Task, model, tok, preprocess, items, plots: Path) -> dict:
    train = load_split(task.dataset, task.train_split)
    xtr = embed_images(model, preprocess, [it["image"] for it in train], num_workers=0).numpy()
    xte = embed_images(model, preprocess, [it["image"] for it in items], num_workers=0).numpy()
    ytr, yte = [it["label"] for it in train], [it["label"] for it in items]
    if task.kind == "linear_probe":
        classes, predict = probe.fit_linear_probe(xtr, ytr, seed=task.seed)
        proba = predict(xte)
        pred = [classes[i] for i in proba.argmax(1)]
        return {"train_n": len(train), **_classification_metrics(yte, pred, proba.max(1))}
    out = {}
    for k in task.shots:
        scores = []
        for s in task.seeds:
            idx = probe.few_shot_indices(ytr, k, s)
            classes, predict = probe.fit_linear_probe(xtr[idx], [ytr[i] for i in idx], seed=s)
            pred = [classes[i] for i in predict(xte).argmax(1)]
            scores.append(balanced_accuracy(yte, pred))
        out[f"{k}-shot"] = {"balanced_accuracy_mean": float(np.mean(scores)), "std": float(np.std(scores)),
                            "seeds": task.seeds}
    return out


def run_retrieval(task: Task, model, tok, preprocess, items, plots: Path) -> dict:
    if tok is None:
        return _image_retrieval(model, preprocess, items)
    items = [it for it in items if it["text"]]
    img = embed_images(model, preprocess, [it["image"] for it in items], num_workers=0).numpy()
    txt = embed_texts(model, tok, [it["text"] for it in items]).numpy()
    sim = txt @ img.T
    out = {f"t2i_R@{k}": recall_at_k(sim, k) for k in (1, 5, 10)}
    out.update({f"i2t_R@{k}": recall_at_k(sim.T, k) for k in (1, 5, 10)})
    labels = [it["label"] for it in items]
    if all(labels):
        out["t2i_class_P@5"] = class_precision_at_k(sim, labels, labels, 5)
        out["image_class_P@5"] = class_precision_at_k(np.where(np.eye(len(img)) > 0, -np.inf, img @ img.T),
                                                      labels, labels, 5)
    out["n"] = len(items)
    _plot_retrieval_grid(items, sim, plots / f"{task.name}_retrieval.png", task.name,
                         n_queries=int(task.settings.get("grid_queries", 4)), k=int(task.settings.get("grid_k", 5)))
    return out


def _image_retrieval(model, preprocess, items) -> dict:
    """An image-only encoder: image-to-image class precision@k (each image queries the others)."""
    labels = [it["label"] for it in items]
    if not all(labels):
        raise PathVLMError("image-to-image retrieval needs a label on every sample")
    img = embed_images(model, preprocess, [it["image"] for it in items], num_workers=0).numpy()
    sim = np.where(np.eye(len(img)) > 0, -np.inf, img @ img.T)
    out = {f"image_class_P@{k}": class_precision_at_k(sim, labels, labels, k) for k in (1, 5, 10)}
    out.update({"n": len(items), "text_metrics": "not measured: image-only encoder (no text tower)"})
    return out


def _plot_retrieval_grid(items, sim, path: Path, title: str, n_queries: int = 4, k: int = 5) -> None:
    """Text-to-image retrieval grid: one row per query caption (spread over the set), its top-k images
    with cosine scores; the query's own image is framed green, others red."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pathvlm.images import load_image

    n = len(items)
    queries = sorted({int(round(q)) for q in np.linspace(0, n - 1, min(n_queries, n))})
    k = min(k, n)
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(2 * (k + 1), 2.2 * len(queries)), squeeze=False)
    for row, q in enumerate(queries):
        ax = axes[row][0]
        ax.axis("off")
        ax.text(0, 0.5, "\n".join(textwrap.wrap(items[q]["text"], 28)[:7]), fontsize=6.5, va="center")
        for col, j in enumerate(np.argsort(-sim[q], kind="stable")[:k], 1):
            ax = axes[row][col]
            ax.imshow(load_image(items[j]["image"]).resize((128, 128)))
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("green" if j == q else "red")
                spine.set_linewidth(3)
            ax.set_title(f"{sim[q, j]:.3f}" + (f" {items[j]['label'][:18]}" if items[j].get("label") else ""), fontsize=6.5)
    fig.suptitle(f"text-to-image retrieval: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_stain_robustness(task: Task, model, tok, preprocess, items, plots: Path) -> dict:
    """Embeddings and zero-shot predictions under HED stain jitter (Tellez et al. 2018)."""
    import io

    from PIL import Image

    from pathvlm.data.stain import stain_jitter
    from pathvlm.images import load_image

    rng = np.random.default_rng(task.seed)
    sigma = float(task.settings.get("sigma", 0.05))
    jittered = []
    for it in items:
        arr = stain_jitter(np.asarray(load_image(it["image"])), rng, sigma=sigma, bias=sigma)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        jittered.append(buf.getvalue())
    a = embed_images(model, preprocess, [it["image"] for it in items], num_workers=0)
    b = embed_images(model, preprocess, jittered, num_workers=0)
    out = {"mean_cosine_original_vs_jittered": float((a * b).sum(-1).mean()), "sigma": sigma, "n": len(items)}
    labels = [it["label"] for it in items]
    x = np.concatenate([a.numpy(), b.numpy()])
    out["robustness_index"] = probe.robustness_index(x, labels + labels, ["original"] * len(items) + ["jittered"] * len(items),
                                                     k=int(task.settings.get("k", 10)))
    if task.prompts and tok is None:
        out["zeroshot_prediction_agreement"] = "not measured: image-only encoder (no text tower)"
    elif task.prompts:
        ps = load_prompt_set(task.prompts)
        clf = ZeroShotClassifier(model, tok, ps)
        pa, pb = clf.probabilities(a).argmax(-1), clf.probabilities(b).argmax(-1)
        out["zeroshot_prediction_agreement"] = float((pa == pb).float().mean())
    return out


RUNNERS = {"zeroshot": run_zeroshot, "linear_probe": run_probe, "few_shot": run_probe,
           "retrieval": run_retrieval, "stain_robustness": run_stain_robustness}


def run_eval(model_source: str | None, task_names: list[str], out: str | Path, split: str = "test",
             reasoner: str | None = None, skip_missing: bool = False, device: str = "cpu",
             max_samples: int | None = None, grounding: dict | None = None) -> dict:
    """Run tasks and write results.json, report.md, report.html and plots under ``out`` (and, for generative
    tasks, every completion in ``completions/<task>.jsonl``).

    Embedding kinds use ``model_source`` (a PathCLIP, ``create_clip``); generative kinds use
    ``reasoner`` (``pathvlm.chat.load_reasoner``). Each is loaded only if a task needs it. With
    ``skip_missing`` a task whose data is not on this machine is recorded as skipped, with the reason.
    ``max_samples`` keeps each task's first N samples (in the task's own order, by id for built
    question sets), to bound a slow generative run; the results record it. ``grounding``
    (``{"ground_options": True, "ground_verdicts": True}``) decodes every generative task with answer grounding;
    each task's recorded decoding settings say so."""
    from evals.data import DataMissing

    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    tasks = [load_task(name) for name in task_names]
    for t in tasks:
        if t.generative and grounding:
            t.decoding = {**(t.decoding or {}), **{k: True for k, on in grounding.items() if on}}
    results = {"tasks": {}}
    clip = {}
    if any(not t.generative for t in tasks):
        model, preprocess, tok = load_embedding_model(model_source or "pathclip-nano", [t for t in tasks if not t.generative])
        results.update({"model": model_source or "pathclip-nano", "fingerprint": model_fingerprint(model)})
    r = None
    if any(t.generative for t in tasks):
        if not reasoner:
            raise PathVLMError("generative tasks need a reasoner: pass --reasoner (or --model when every task is generative)")
        r = _load_reasoner(reasoner, device)
        results.update({"reasoner": reasoner, "reasoner_fingerprint": _reasoner_fingerprint(r)})

    def clip_loader(source):
        if source not in clip:
            m, p, t = create_clip(source)
            clip[source] = (m, p, t, f"{source} ({model_fingerprint(m)})")
        return clip[source]

    timing = {}
    for task in tasks:
        try:
            items = load_split(task.dataset, task.dataset.get("split", split))
        except DataMissing as e:
            if not skip_missing:
                raise
            results["tasks"][task.name] = {"kind": task.kind, "skipped": str(e)}
            continue
        if max_samples is not None:
            if max_samples < 1:
                raise PathVLMError(f"--max-samples must be at least 1, not {max_samples}")
            items = items[:max_samples]
        dh = data_hash(items)
        if task.expected_data_sha256 and dh != task.expected_data_sha256:
            raise PathVLMError(f"task {task.name}: the data differs from the pinned data "
                               f"(hash {dh[:12]} != {task.expected_data_sha256[:12]}); results would not be comparable")
        start = time.perf_counter()
        if task.generative:
            from evals.generative import run_generative

            metrics = run_generative(task, r, items, out / "plots", clip_loader,
                                     completions=out / "completions" / f"{task.name}.jsonl")
        else:
            metrics = RUNNERS[task.kind](task, model, tok, preprocess, items, out / "plots")
        results["tasks"][task.name] = {"kind": task.kind, "data_sha256": dh, "seed": task.seed, "prompts": task.prompts,
                                       "n_samples": len(items), "metrics": metrics}
        if max_samples is not None:
            results["tasks"][task.name]["max_samples"] = max_samples
        timing[task.name] = round(time.perf_counter() - start, 2)
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True, default=_round))
    (out / "report.md").write_text(render_report(results))
    (out / "report.html").write_text(render_html(results, out))
    (out / "timing.json").write_text(json.dumps(timing, indent=1))  # apart: the results must repeat exactly
    return results


TEXT_KINDS = ("zeroshot",)  # embedding kinds that cannot run without a text tower


def load_embedding_model(source: str, tasks: list[Task]):
    """``(model, preprocess, tokenizer)`` for embedding tasks; an image-only encoder comes with tokenizer
    None, and is refused (before anything runs) if a task needs text."""
    from pathvlm.encoders.factory import ImageOnlySource, create_image_encoder

    try:
        return create_clip(source)
    except ImageOnlySource as e:
        needs_text = [t.name for t in tasks if t.kind in TEXT_KINDS]
        if needs_text:
            raise PathVLMError(f"{', '.join(needs_text)}: zero-shot tasks need a text tower. {e}") from None
    model, preprocess = create_image_encoder(source)
    return model, preprocess, None


def _load_reasoner(source: str, device: str):
    try:
        from pathvlm.chat import load_reasoner
    except ImportError as e:
        raise PathVLMError(f"the reasoner API (pathvlm.chat) is not available in this checkout: {e}") from None
    return load_reasoner(source, device=device)


def _reasoner_fingerprint(r) -> str | None:
    """A hash of the reasoner's weights when it exposes its model (same scheme as PathCLIP's)."""
    fp = getattr(r, "fingerprint", None)
    if isinstance(fp, str):
        return fp
    model = getattr(r, "model", None)
    return model_fingerprint(model) if hasattr(model, "state_dict") else None


def _round(x):
    return float(x)


def _plot_confusion(conf: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(conf["matrix"])
    fig, ax = plt.subplots(figsize=(1.2 * len(m) + 2, 1.2 * len(m) + 1.5))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(m)), conf["classes"], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(m)), conf["classes"], fontsize=8)
    for i in range(len(m)):
        for j in range(len(m)):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_reliability(bins: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    xs = [b["confidence"] for b in bins if b["count"]]
    ys = [b["accuracy"] for b in bins if b["count"]]
    ax.bar([(b["lo"] + b["hi"]) / 2 for b in bins if b["count"]], ys, width=0.09, alpha=0.6, label="accuracy")
    ax.plot(xs, ys, "o-", label="per bin")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability: {title}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
