"""Scoring a generative model's answers: closed questions (option letter, yes/no, class name), open
VQA, captions and reports, PathCLIP consistency, and the image-dependence controls (blank, noise and
shuffled images). Plain functions of strings and arrays, tested against hand-computed values."""
from __future__ import annotations

import io
import math
from collections import Counter

import numpy as np

from pathvlm.evals import text_metrics as tm
from pathvlm.evals.answers import answer_span, extract_option_letter, extract_yes_no, normalise_answer

CLOSED_TYPES = ("option_letter", "yes_no", "class")


def extract_answer(text: str, answer_type: str, options: list[str] | None = None) -> str | None:
    """The answer read from a completion, in the reference's form, or None when it cannot be read:
    an option letter, 'yes'/'no', the one class name among ``options`` that the answer names, or the
    normalised open answer."""
    if answer_type == "option_letter":
        return extract_option_letter(text, options or None)
    if answer_type == "yes_no":
        return extract_yes_no(text)
    if answer_type == "class":
        said = normalise_answer(text)
        if not said:
            return None
        names = {normalise_answer(o): o for o in options or []}
        if said in names:
            return normalise_answer(names[said])
        hits = [n for n in names if n and f" {n} " in f" {said} "]
        hits = [h for h in hits if not any(h != o and h in o for o in hits)]  # "carcinoma" inside "x carcinoma"
        return hits[0] if len(hits) == 1 else None
    return normalise_answer(text) or None


def reference_answer(answer: str, answer_type: str) -> str:
    if answer_type == "option_letter":
        return answer.strip().upper()
    if answer_type == "yes_no":
        return answer.strip().lower()
    return normalise_answer(answer)


def closed_metrics(extracted: list, references: list[str], answer_types: list[str]) -> dict:
    """Accuracy over all closed questions and per answer type; an unreadable answer (None) is wrong and
    counted in ``unreadable_rate``."""
    correct = [e is not None and e == reference_answer(r, t) for e, r, t in zip(extracted, references, answer_types)]
    out = {"accuracy": float(np.mean(correct)) if correct else 0.0, "n": len(correct),
           "unreadable_rate": float(np.mean([e is None for e in extracted])) if extracted else 0.0}
    for t in sorted(set(answer_types)):
        idx = [i for i, x in enumerate(answer_types) if x == t]
        out[f"accuracy_{t}"] = float(np.mean([correct[i] for i in idx]))
        out[f"n_{t}"] = len(idx)
    return out


def open_metrics(predictions: list[str], references: list[str]) -> dict:
    """PathVQA's open-ended measures on the answer span: exact match, token recall, token F1 (means)."""
    spans = [answer_span(p) for p in predictions]
    n = len(spans)
    return {"exact_match": sum(tm.exact_match(p, r) for p, r in zip(spans, references)) / max(1, n),
            "token_recall": sum(tm.token_recall(p, r) for p, r in zip(spans, references)) / max(1, n),
            "token_f1": sum(tm.token_f1(p, r) for p, r in zip(spans, references)) / max(1, n), "n": n}


def caption_metrics(predictions: list[str], references: list[str]) -> dict:
    """Corpus BLEU-4 and mean ROUGE-L and chrF of the answer spans against one reference each."""
    spans = [answer_span(p) for p in predictions]
    n = max(1, len(spans))
    return {"bleu4": tm.bleu(spans, references), "rouge_l": sum(tm.rouge_l(p, r) for p, r in zip(spans, references)) / n,
            "chrf": tm.chrf_corpus(spans, references), "n": len(spans)}


def clip_consistency(text_embeddings, image_embeddings) -> float:
    """Mean cosine between each generated text's embedding and its own image's embedding (PathCLIP):
    does the text describe what the image encoder sees?"""
    t = np.asarray(text_embeddings, float)
    i = np.asarray(image_embeddings, float)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    i = i / np.linalg.norm(i, axis=1, keepdims=True)
    return float((t * i).sum(1).mean())


def answer_entropy(answers: list) -> float:
    """Shannon entropy (bits) of the answer distribution; an unreadable answer (None) is one category.
    0 means the same answer every time, log2(k) an even spread over k answers."""
    counts = Counter("<unreadable>" if a is None else a for a in answers)
    n = sum(counts.values())
    return float(-sum(c / n * math.log2(c / n) for c in counts.values())) if n else 0.0


def modal_share(answers: list) -> float:
    """Share of the most common answer (None included as a category)."""
    counts = Counter("<unreadable>" if a is None else a for a in answers)
    return max(counts.values()) / len(answers) if answers else 0.0


def change_rate(before: list, after: list) -> float:
    """Share of questions whose extracted answer differs between two runs."""
    return float(np.mean([a != b for a, b in zip(before, after)])) if before else 0.0


# --- image-dependence controls ---------------------------------------------------------------------

CONTROLS = ("blank", "noise", "shuffled")


def blank_image(size: tuple[int, int] = (224, 224)):
    from PIL import Image

    return Image.new("RGB", size, (255, 255, 255))


def noise_image(seed: int, size: tuple[int, int] = (224, 224)):
    """Uniform RGB noise, a function of the seed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def shuffled_indices(n: int, seed: int) -> list[int]:
    """A seeded permutation with no fixed point (every question gets another sample's image); the
    identity for n < 2."""
    if n < 2:
        return list(range(n))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    return [int(perm[(k + 1) % n]) for k in np.argsort(perm)]


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
