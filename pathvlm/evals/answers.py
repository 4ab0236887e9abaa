"""Pulling the answer out of a model's free text: option letters, yes/no, open answers.

Generative models answer in many shapes ("<answer>B</answer>", "The answer is (b).", "B) Liver",
"Liver", "Yes, there is necrosis", "I cannot determine this"); every extractor returns ``None``
when no answer can be read, so an unreadable answer counts as wrong rather than as a guess.
"""
from __future__ import annotations

import re
import string

ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S | re.I)
THINK_TAG = re.compile(r"<think>.*?</think>", re.S | re.I)
CANNOT = re.compile(r"\b(cannot|can't|can not|unable to) (determine|tell|say|be determined)|\bnot (possible|enough)\b"
                    r"|\bundetermin|\binsufficient\b", re.I)


def answer_span(text: str) -> str:
    """The text inside <answer>...</answer> if present, else the text without its <think> block."""
    if not text:
        return ""
    m = ANSWER_TAG.findall(text)
    if m:
        return m[-1].strip()
    return THINK_TAG.sub("", text).strip()


def extract_option_letter(text: str, options: list[str] | None = None) -> str | None:
    """The chosen option letter (A, B, ...), or None."""
    span = answer_span(text)
    n = len(options) if options else 10
    letters = string.ascii_uppercase[:n]
    patterns = [
        rf"^\(?([{letters}])\)?(?:[.):,\s]|$)",  # "B", "(B)", "B) Liver", "B. Liver"
        rf"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?([{letters}])\)?(?![A-Za-z])",  # "the answer is (B)"
        rf"(?<![A-Za-z])\(([{letters}])\)",  # "... (C) ..."
    ]
    for p in patterns:
        m = re.search(p, span, re.I if p != patterns[0] else 0)
        if m:
            return m.group(1).upper()
    lowered = span.lower()
    if options:
        hits = [i for i, o in enumerate(options) if o and re.search(rf"\b{re.escape(o.lower())}\b", lowered)]
        if len(hits) == 1:
            return letters[hits[0]]
    m = re.fullmatch(rf"\s*([{letters.lower()}])\s*[.)]?\s*", lowered)
    return m.group(1).upper() if m else None


def extract_yes_no(text: str) -> str | None:
    """'yes', 'no', or None (no answer, both, or 'cannot determine')."""
    span = answer_span(text).lower()
    if not span or CANNOT.search(span):
        return None
    first = re.match(r"\W*(yes|no|yeah|yep|nope|correct|incorrect|true|false)\b\s*(?:[,.!;:]|$)", span)
    if first:
        return {"yes": "yes", "yeah": "yes", "yep": "yes", "correct": "yes", "true": "yes"}.get(first.group(1), "no")
    has_yes = re.search(r"\byes\b", span) is not None
    has_no = re.search(r"\bno\b", span) is not None
    if has_yes != has_no:
        return "yes" if has_yes else "no"
    return None


ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    t = answer_span(text).lower()
    t = "".join(ch for ch in t if ch not in set(string.punctuation))
    t = ARTICLES.sub(" ", t)
    return " ".join(t.split())


def is_cannot_determine(text: str) -> bool:
    return bool(CANNOT.search(answer_span(text)))
