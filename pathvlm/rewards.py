"""GRPO reward functions: plain ``f(completions, **kwargs) -> list[float]``, chosen by name.

``completions`` are strings or TRL conversational completions (lists of messages); the keyword
arguments are the dataset columns the ``grpo`` builder writes (``answer``, ``answer_type``,
``options``, ``label``...), one value per completion, as trl's GRPOTrainer passes them.
"""
from __future__ import annotations

import re
from typing import Callable

from pathvlm.evals.answers import (answer_span, extract_option_letter, extract_yes_no, is_cannot_determine,
                                  normalise_answer)

REWARDS: dict[str, Callable] = {}
FORMAT = re.compile(r"^\s*<think>(.+?)</think>\s*<answer>(.+?)</answer>\s*$", re.S)


def reward(name: str):
    def register(fn):
        REWARDS[name] = fn
        return fn

    return register


def get_reward(name: str) -> Callable:
    if name not in REWARDS:
        raise KeyError(f"unknown reward '{name}': choose from {', '.join(sorted(REWARDS))}")
    return REWARDS[name]


def _text(completion) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        parts = []
        for m in completion:
            c = m.get("content", "")
            parts.append(c if isinstance(c, str) else " ".join(x.get("text") or "" for x in c))
        return "\n".join(parts)
    return str(completion)


def _per_item(value, n):
    return value if isinstance(value, (list, tuple)) else [value] * n


@reward("accuracy")
def accuracy_reward(completions, answer, answer_type="class", options=None, **kwargs) -> list[float]:
    """1 for a correct final answer, else 0: option letters, yes/no, class names (normalised), or
    ``abstain`` (the image carries no tissue, so the right answer is "cannot determine" and any
    diagnosis scores 0). Abstaining on a question that has an answer also scores 0."""
    n = len(completions)
    answers, types = _per_item(answer, n), _per_item(answer_type, n)
    # options is itself a list: per completion when it is a list of lists, else the same for all
    per_item = isinstance(options, (list, tuple)) and options and isinstance(options[0], (list, tuple, type(None)))
    opts = list(options) if per_item else [options] * n
    out = []
    for c, a, t, o in zip(completions, answers, types, opts):
        text = _text(c)
        if t == "option_letter":
            got = extract_option_letter(text, list(o) if o else None)
            out.append(float(got is not None and got == str(a).strip().upper()))
        elif t == "yes_no":
            out.append(float(extract_yes_no(text) == str(a).strip().lower()))
        elif t == "abstain":
            out.append(float(is_cannot_determine(text)))
        else:
            out.append(float(normalise_answer(answer_span(text)) == normalise_answer(str(a))))
    return out


@reward("format")
def format_reward(completions, **kwargs) -> list[float]:
    """1 when the completion is exactly <think>...</think><answer>...</answer> with both parts non-empty."""
    matches = [FORMAT.match(_text(c)) for c in completions]
    return [float(m is not None and all(g.strip() for g in m.groups())) for m in matches]


@reward("length")
def length_reward(completions, max_words: int = 200, min_think_words: int = 5, **kwargs) -> list[float]:
    """Penalise rambling and empty reasoning: 1 inside [min_think_words, max_words], falling linearly to 0
    at twice the maximum, and 0 for reasoning shorter than the minimum."""
    out = []
    for c in completions:
        text = _text(c)
        think = re.search(r"<think>(.*?)</think>", text, re.S)
        n_think = len(think.group(1).split()) if think else 0
        n = len(text.split())
        if n_think < min_think_words:
            out.append(0.0)
        elif n <= max_words:
            out.append(1.0)
        else:
            out.append(max(0.0, 1.0 - (n - max_words) / max_words))
    return out


class ImageAgreementReward:
    """Does the answer agree with the image? PathCLIP's cosine between the image and the answer text,
    mapped from [-1, 1] to [0, 1]. Built once with a model; called like the other rewards with an
    ``image`` column (bytes or PIL images)."""

    def __init__(self, model, preprocess, tokenizer):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.__name__ = "image_agreement"

    def __call__(self, completions, image, **kwargs) -> list[float]:
        from pathvlm.embed import embed_images, embed_texts

        images = _per_item(image, len(completions))
        answers = [answer_span(_text(c)) or " " for c in completions]
        img = embed_images(self.model, self.preprocess, images, num_workers=0)
        txt = embed_texts(self.model, self.tokenizer, answers)
        return [float((1 + s) / 2) for s in (img * txt).sum(-1).tolist()]


@reward("consistency")
def consistency_reward(completions, prompts=None, label=None, options=None, **kwargs) -> list[float]:
    """Half for self-consistency, half for clean words: 0.5 when ``pathvlm.evals.consistency`` finds no
    disagreement between reasoning and answer (or report lines), no self-contradiction and no wrong organ
    (the organ of the row's ``label`` in the knowledge base); 0.5 when no word is garbled
    (``pathvlm.evals.garbled``, pyspellchecker's English list plus the domain's words; needs the eval extra).
    The question in ``prompts`` (TRL passes it) lets a yes/no answer be read against the class asked about."""
    from pathvlm.data.knowledge import KnowledgeBase
    from pathvlm.evals import garbled
    from pathvlm.evals.consistency import check, options_in, vocabulary
    from pathvlm.imports import require_package

    require_package("spellchecker", "eval", "pyspellchecker")
    n = len(completions)
    questions = [_text(p) if p is not None else None for p in _per_item(prompts, n)]
    labels = _per_item(label, n)
    per_item = isinstance(options, (list, tuple)) and options and isinstance(options[0], (list, tuple, type(None)))
    opts = list(options) if per_item else [options] * n
    classes = KnowledgeBase.load().classes
    vocab, lexicon = vocabulary(), _lexicon()
    out = []
    for c, q, lb, o in zip(completions, questions, labels, opts):
        text = _text(c)
        organ = classes[lb]["organ"] if lb in classes else None
        consistent = check(text, q, list(o) if o else options_in(q), organ, vocab).consistent
        clean = not garbled.garbled_words(text, lexicon)
        out.append(0.5 * consistent + 0.5 * clean)
    return out


_LEXICON = None


def _lexicon():
    global _LEXICON
    if _LEXICON is None:
        from pathvlm.evals.garbled import Lexicon

        _LEXICON = Lexicon.default()
    return _LEXICON
