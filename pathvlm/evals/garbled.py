"""Garbled words: the share of words in generated text that are not English in the tokenizer's sense.

A small language model can glue pieces of words into something that is no word ("polarity
andselectorin"). A word is fine when it is

- a whole-word token of the tokenizer's vocabulary (``Ġword`` in byte-level BPE, ``▁word`` in
  SentencePiece): the tokenizer learnt it as a word, so it is a word of its training text;
- in an English word list, pyspellchecker's (about 160,000 words, offline, in the ``eval`` extra);
- in the morphology knowledge base or the prompt sets (the domain's own words: "cribriform",
  "dyskeratosis"), or in the words a caller adds (the question asked);
- an inflection of one of those (plural, past, -ing, -ly), an abbreviation in capitals of up to 6
  letters ("HGSC", "OSCC"), or a single letter.

Hyphenated words are fine when each part is. Without pyspellchecker the list is the tokenizer's words
and the domain's, and :attr:`Lexicon.sources` says so, so the figure is never read without its source.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

WORD = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*")
TAG = re.compile(r"</?(?:think|answer)>", re.I)
SUFFIXES = ("s", "es", "ed", "d", "ing", "ly", "er", "est", "al")
WORD_PREFIXES = ("Ġ", "▁")  # byte-level BPE (GPT-2, SmolLM2) and SentencePiece mark a token that starts a word


def tokenizer_words(tokenizer) -> set[str]:
    """The tokenizer's whole-word tokens made of letters only (lower case)."""
    if tokenizer is None:
        return set()
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else dict(tokenizer)
    out = set()
    for tok in vocab:
        if tok[:1] in WORD_PREFIXES and tok[1:].isalpha() and tok[1:].isascii():
            out.add(tok[1:].lower())
    return out


@lru_cache(maxsize=1)
def english_words() -> frozenset[str] | None:
    """pyspellchecker's English word list, or None when the package is not installed."""
    try:
        from spellchecker import SpellChecker
    except ImportError:
        return None
    return frozenset(w.lower() for w in SpellChecker(language="en").word_frequency.keys())


@lru_cache(maxsize=1)
def domain_words() -> frozenset[str]:
    """Every word of the bundled knowledge base, the reports it writes, the recipe's prompts and the
    prompt sets."""
    from pathvlm.data import builders
    from pathvlm.data.knowledge import DEFAULT_KB, KnowledgeBase

    root = Path(__file__).resolve().parent.parent
    texts = [json.dumps(json.loads(f.read_text()), ensure_ascii=False)
             for f in [DEFAULT_KB, *sorted((root / "prompts").glob("*.json"))]]
    kb = KnowledgeBase.load()
    texts += [kb.report(label) for label in kb.classes]
    texts += [builders.FORMAT_INSTRUCTION, builders.yes_no_text("x"), "Which diagnosis best fits this image? "
              "Describe the histological features of this image. Write a structured pathology report for this image. "
              "What does this image show? This fits, which is option. These features are not those of"]
    return frozenset(w.lower() for t in texts for w in WORD.findall(t))


class Lexicon:
    """The words counted as English; build with :meth:`default` (tokenizer + word list + domain)."""

    def __init__(self, words=(), sources: tuple[str, ...] = ()):
        self.words = set(words)
        self.sources = tuple(sources)

    @classmethod
    def default(cls, tokenizer=None, extra=()) -> "Lexicon":
        words, sources = set(domain_words()), ["knowledge base and prompt sets"]
        tw = tokenizer_words(tokenizer)
        if tw:
            words |= tw
            sources.insert(0, "tokenizer whole-word tokens")
        en = english_words()
        if en is not None:
            words |= en
            sources.append("pyspellchecker English list")
        lex = cls(words, tuple(sources))
        lex.add(extra)
        return lex

    def add(self, texts) -> None:
        """Add every word of these texts (the question asked, a prompt) as known."""
        for t in [texts] if isinstance(texts, str) else texts:
            self.words |= {w.lower() for w in WORD.findall(t or "")}

    def known(self, word: str) -> bool:
        if len(word) <= 1 or (word.isupper() and len(word) <= 6):
            return True
        w = word.lower().replace("’", "'")
        if w.endswith("'s"):
            w = w[:-2]
        if w in self.words:
            return True
        if "-" in w or "'" in w:
            return all(self.known(p) for p in re.split(r"[-']", w) if p)
        return any(w.endswith(s) and len(w) - len(s) >= 3 and (w[: -len(s)] in self.words or w[: -len(s)] + "e" in self.words)
                   for s in SUFFIXES)


def text_words(text: str) -> list[str]:
    """The words of a completion (tags removed; a completion with <answer> keeps its reasoning too)."""
    return WORD.findall(TAG.sub(" ", text or ""))


def garbled_words(text: str, lexicon: Lexicon) -> list[str]:
    return [w for w in text_words(text) if not lexicon.known(w)]


def garbled_metrics(texts: list[str], lexicon: Lexicon, n_top: int = 10) -> dict:
    """``garbled_word_rate`` (garbled words / words), the share of answers with at least one, the most
    frequent garbled words and the word list's sources."""
    n_words, bad, with_bad = 0, Counter(), 0
    for t in texts:
        words = text_words(t)
        g = [w for w in words if not lexicon.known(w)]
        n_words += len(words)
        bad.update(w.lower() for w in g)
        with_bad += bool(g)
    return {"garbled_word_rate": sum(bad.values()) / n_words if n_words else 0.0,
            "garbled": {"answers_with_garbled_rate": with_bad / len(texts) if texts else 0.0, "n_words": n_words,
                        "n_garbled": sum(bad.values()), "top": [[w, c] for w, c in bad.most_common(n_top)],
                        "lexicon": " + ".join(lexicon.sources)}}

