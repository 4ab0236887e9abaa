"""Task kinds that run the reasoner (``pathvlm.chat.Reasoner``): closed and open VQA, multiple choice,
closed questions of a built recipe, captions and reports, with the image-dependence controls.

Every call is greedy with the task's pinned decoding settings (``decoding:`` in the YAML: max_new_tokens,
temperature, top_p, seed), which the results record. The prompt a question is asked with is either the
built recipe's own prompt (``prompt_from_data``, the format the model was trained on) or the question
plus the task's pinned ``instruction`` and option format.
"""
from __future__ import annotations

import string
from pathlib import Path

import numpy as np

from pathvlm.errors import PathVLMError
from pathvlm.evals import generation as g

GENERATIVE_KINDS = ("vqa_closed", "vqa_open", "vqa", "mcq", "closed_qa", "caption", "report")
DEFAULT_DECODING = {"max_new_tokens": 128, "temperature": 0.0, "top_p": 1.0, "seed": 0, "batch_size": 16}
GROUNDING = ("ground_options", "ground_verdicts")  # decoding keys: off unless a task or `pathvlm eval --ground-*` sets them
ANSWER_TYPE_OF_TASK = {"vqa_closed": "yes_no", "vqa_open": "open", "mcq": "option_letter"}


def decoding(task) -> dict:
    return {**DEFAULT_DECODING, **(task.decoding or {})}


def question_text(item: dict, task) -> str:
    """The text the model is asked: the recipe's prompt as built, or the question with the task's pinned
    instruction (and the options as ``(A) ...`` lines, PathMMU's format)."""
    if item.get("prompt_from_data"):
        return item["question"]
    s = task.settings
    q = item["question"].strip()
    if item["answer_type"] == "option_letter":
        fmt = s.get("option_format", "({letter}) {option}")
        q += "\n" + "\n".join(fmt.format(letter=string.ascii_uppercase[i], option=o) for i, o in enumerate(item["options"]))
        q += "\n" + s.get("mcq_instruction", "Answer with the option's letter from the given choices directly.")
    elif item["answer_type"] == "yes_no":
        q += "\n" + s.get("yes_no_instruction", "Answer yes or no.")
    elif item["answer_type"] == "open" and s.get("open_instruction"):
        q += "\n" + s["open_instruction"]
    if s.get("suffix"):
        q += "\n" + s["suffix"]
    return q


def qa_items(task, items: list[dict]) -> list[dict]:
    """Give every item an ``answer_type``; keep those the kind scores."""
    out = []
    for it in items:
        it = dict(it)
        if not it.get("answer_type"):
            it["answer_type"] = ANSWER_TYPE_OF_TASK.get(it.get("task", ""), "caption" if it.get("text") else "")
        if task.kind in ("caption", "report"):
            if not it.get("answer"):
                it["answer"] = it.get("text", "")
            if not it.get("question"):
                it["question"] = task.settings.get("prompt", "Describe the histological features of this image.")
                it["answer_type"] = task.kind
        out.append(it)
    keep = {"vqa_closed": ("yes_no",), "vqa_open": ("open",), "vqa": ("yes_no", "open"), "mcq": ("option_letter",),
            "closed_qa": g.CLOSED_TYPES, "caption": ("caption",), "report": ("report",)}[task.kind]
    free = task.kind in ("caption", "report") and task.settings.get("reference_free")  # tiles without a reference text
    out = [it for it in out if it["answer_type"] in keep and (it.get("answer") or free)]
    if not out:
        raise PathVLMError(f"task {task.name}: no samples of the kind {task.kind} (answer types {keep})")
    return out


def _ask(reasoner, images: list, questions: list[str], dec: dict) -> list[str]:
    """Greedy answers, ``batch_size`` requests at a time through ``Reasoner.chat_batch`` (left padding;
    the batch size is pinned with the decoding settings because padding can move the last digit of
    logits), or one at a time when batch_size is 1 or the reasoner has no batch method."""
    conversations = [[{"role": "user", "content": q}] for q in questions]
    kw = {"max_new_tokens": int(dec["max_new_tokens"]), "temperature": float(dec["temperature"]),
          "top_p": float(dec["top_p"]), "seed": dec.get("seed")}
    # answer grounding (pathvlm.vlm.option_grounding / verdict_grounding), when the task or `pathvlm eval` asks
    kw.update({k: True for k in GROUNDING if dec.get(k)})
    batch = int(dec.get("batch_size", 1))
    if batch > 1 and hasattr(reasoner, "chat_batch"):
        return [r.text for r in reasoner.chat_batch(images, conversations, batch_size=batch, **kw)]
    return [reasoner.chat([image], conv, stream=False, **kw).text for image, conv in zip(images, conversations)]


def _pil(data: bytes):
    from pathvlm.images import load_image

    return load_image(data)


def run_generative(task, reasoner, items: list[dict], plots: Path, clip_loader=None,
                   completions: Path | None = None) -> dict:
    """Ask every question (one image each), score by kind; closed kinds also run the controls.
    ``completions``: a JSON-lines file to write every item's question, reference and completion to, with the
    consistency reasons found in it (:func:`write_completions`), so each figure can be audited item by item."""
    dec = decoding(task)
    items = qa_items(task, items)
    images = [_pil(it["image"]) for it in items]
    questions = [question_text(it, task) for it in items]
    texts = _ask(reasoner, images, questions, dec)
    out: dict = {"decoding": dec, "n": len(items)}
    if any(it.get("image_standin") for it in items):
        out["images"] = "blank stand-ins: the corpus's images are not here, so this measures answers from the text alone"
    examples = []
    for it, q, t in list(zip(items, questions, texts))[: int(task.settings.get("examples", 5))]:
        examples.append({"id": it["id"], "question": q, "reference": it["answer"], "completion": t})
    out["examples"] = examples
    organs = item_organs(items, task)
    reasons: list[list[str]] = []
    out.update(self_consistency(task, reasoner, items, questions, texts, organs, reasons_out=reasons))
    if completions is not None:
        write_completions(completions, items, questions, texts, organs, reasons)
    if task.kind in ("caption", "report"):
        ref = [i for i, it in enumerate(items) if it["answer"]]
        if not ref:
            out["references"] = "none: text metrics and PathCLIP consistency need reference texts"
            return out
        out.update(g.caption_metrics([texts[i] for i in ref], [items[i]["answer"] for i in ref]))
        out.update(_consistency(task, [items[i]["image"] for i in ref], [texts[i] for i in ref],
                                [items[i]["answer"] for i in ref], clip_loader))
        return out
    closed = [i for i, it in enumerate(items) if it["answer_type"] in g.CLOSED_TYPES]
    opened = [i for i, it in enumerate(items) if it["answer_type"] == "open"]
    if opened:
        out["open"] = g.open_metrics([texts[i] for i in opened], [items[i]["answer"] for i in opened])
    if closed:
        extracted = [g.extract_answer(texts[i], items[i]["answer_type"], items[i]["options"]) for i in closed]
        out["closed"] = g.closed_metrics(extracted, [items[i]["answer"] for i in closed],
                                         [items[i]["answer_type"] for i in closed])
        out["closed"]["answer_entropy_bits"] = g.answer_entropy(extracted)
        closed_organs = [organs[i] or "unknown" for i in closed]
        if len(set(closed_organs)) > 1:  # a task over several organs: the same measures per organ
            out["closed"]["by_organ"] = {}
            for o in sorted(set(closed_organs)):
                ks = [k for k, x in enumerate(closed_organs) if x == o]  # positions in `closed` and `extracted`
                out["closed"]["by_organ"][o] = g.closed_metrics([extracted[k] for k in ks],
                                                                [items[closed[k]]["answer"] for k in ks],
                                                                [items[closed[k]]["answer_type"] for k in ks])
        controls = task.settings.get("controls", list(g.CONTROLS))
        if controls:
            out["controls"] = _controls(task, reasoner, [items[i] for i in closed], [images[i] for i in closed],
                                        [questions[i] for i in closed], extracted, dec, controls)
    return out


def item_organ(item: dict, task, kb=None) -> str | None:
    """The tile's organ: its label's in the knowledge base, else the task's ``organ`` setting, else the one
    organ its reference text names (a report's specimen line, a class name); None when unknown."""
    from pathvlm.evals.consistency import claims, vocabulary

    classes = (kb.classes if kb else {})
    if item.get("label") in classes:
        return classes[item["label"]]["organ"]
    if task.settings.get("organ"):
        return task.settings["organ"]
    organs = claims(item.get("text") or item.get("answer") or "", vocabulary()).organs
    return next(iter(organs)) if len(organs) == 1 else None


def item_organs(items: list[dict], task) -> list[str | None]:
    """:func:`item_organ` of every item, with the knowledge base read once."""
    from pathvlm.data.knowledge import KnowledgeBase

    kb = KnowledgeBase.load()
    return [item_organ(it, task, kb) for it in items]


def write_completions(path: Path, items: list[dict], questions: list[str], texts: list[str],
                      organs: list[str | None], reasons: list[list[str]]) -> None:
    """One JSON line per item: id, organ, question, reference answer, completion and the consistency reasons
    :func:`self_consistency` found (empty when consistent)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for it, q, t, org, why in zip(items, questions, texts, organs, reasons):
            f.write(json.dumps({"id": str(it["id"]), "organ": org, "question": q, "reference": it.get("answer"),
                                "completion": t, "inconsistent": why}) + "\n")


def self_consistency(task, reasoner, items: list[dict], questions: list[str], texts: list[str],
                     organs: list[str | None] | None = None, reasons_out: list | None = None) -> dict:
    """``consistency`` (pathvlm.evals.consistency: reasoning vs answer, report lines, self-contradiction,
    wrong organ) and ``garbled_word_rate`` (pathvlm.evals.garbled, with the reasoner's tokenizer and the
    questions' words in the lexicon) of the completions. ``organs``: the items' (:func:`item_organs`)."""
    from pathvlm.evals.consistency import consistency_metrics, options_in
    from pathvlm.evals.garbled import Lexicon, garbled_metrics

    organs = organs if organs is not None else item_organs(items, task)
    options = [list(it.get("options") or []) or options_in(q) for it, q in zip(items, questions)]
    cons = consistency_metrics(texts, questions, options, organs, [str(it["id"]) for it in items],
                               n_examples=int(task.settings.get("examples", 5)), reasons_out=reasons_out)
    tokenizer = getattr(getattr(reasoner, "processor", None), "tokenizer", None)
    return {"consistency": cons, **garbled_metrics(texts, Lexicon.default(tokenizer, extra=questions))}


def _controls(task, reasoner, items, images, questions, extracted, dec, controls) -> dict:
    """Re-ask each closed question with a white image, seeded noise and another sample's image; how
    often the answer changes, and how spread the answers are (entropy, modal share). A model that
    ignores the image keeps its answers (change rate 0) whatever it is shown."""
    n = min(len(items), int(task.settings.get("controls_max_samples", len(items))))
    items, images, questions, base = items[:n], images[:n], questions[:n], extracted[:n]
    out = {"n": n, "original": {"answer_entropy_bits": g.answer_entropy(base), "modal_share": g.modal_share(base)}}
    perm = g.shuffled_indices(n, task.seed)
    for kind in controls:
        if kind == "blank":
            shown = [g.blank_image(im.size) for im in images]
        elif kind == "noise":
            shown = [g.noise_image(task.seed * 100003 + k, im.size) for k, im in enumerate(images)]
        elif kind == "shuffled":
            shown = [images[perm[k]] for k in range(n)]
        else:
            raise PathVLMError(f"task {task.name}: unknown control {kind!r}; choose from {g.CONTROLS}")
        texts = _ask(reasoner, shown, questions, dec)
        ans = [g.extract_answer(t, it["answer_type"], it["options"]) for t, it in zip(texts, items)]
        acc = g.closed_metrics(ans, [it["answer"] for it in items], [it["answer_type"] for it in items])["accuracy"]
        out[kind] = {"answer_change_rate": g.change_rate(base, ans), "accuracy": acc,
                     "answer_entropy_bits": g.answer_entropy(ans), "modal_share": g.modal_share(ans),
                     "unreadable_rate": float(np.mean([a is None for a in ans]))}
    return out


def _consistency(task, images, texts, references, clip_loader) -> dict:
    """PathCLIP consistency of the generated texts with their images, beside the same score for the
    reference texts (what a faithful description reaches) and for references paired with the wrong image."""
    if clip_loader is None:
        return {}
    from pathvlm.embed import embed_images, embed_texts
    from pathvlm.evals.answers import answer_span

    model, preprocess, tok, name = clip_loader(task.clip_model)
    img = embed_images(model, preprocess, images, num_workers=0).numpy()
    gen = embed_texts(model, tok, [answer_span(t) or "." for t in texts]).numpy()
    ref = embed_texts(model, tok, references).numpy()
    perm = g.shuffled_indices(len(images), task.seed)
    return {"clip_model": name, "clip_consistency": g.clip_consistency(gen, img),
            "clip_consistency_reference": g.clip_consistency(ref, img),
            "clip_consistency_reference_wrong_image": g.clip_consistency(ref, img[perm])}
