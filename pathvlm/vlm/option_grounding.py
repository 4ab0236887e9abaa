"""Option grounding: a multiple-choice answer's letter is the letter of the option the reasoning names.

pathvlm-nano's reasoning ends "This fits benign colonic tissue, which is option B." and then answers
``<answer>B</answer>``. The class it names is usually right; the letter is a lookup in the question's option
list that a 135M language model gets wrong far more often for some letters than others (on the v2 bundle's
held-out questions, option C was answered right 44 times of 75 and the other letters 90 % of the time: the
letter followed the class, not the list). Grounding makes the lookup exact at decoding time:

- after "..., which is option" the next token is forced to the letter of the option whose text the sentence
  names (when exactly one option's text is in it; otherwise the model chooses as usual);
- after "<answer>" the next token is forced to the letter the reasoning gave, so the answer never contradicts it.

Nothing else changes: the class is still the model's own choice, free text and yes/no questions are untouched,
and a prompt without an A./B./... option list is never constrained. Opt-in: ``load_reasoner(...,
ground_options=True)``, ``pathvlm chat|serve --ground-options``, ``python -m train.vlm.evaluate ...
--ground-options`` (the model cards report the model without it).
"""
from __future__ import annotations

import re

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from pathvlm.vlm.token_grounding import TokenGrounding, single_token

OPTION_LINE = re.compile(r"^\s*([A-H])[.)]\s+(.+?)\s*$", re.M)
LOOKUP = re.compile(r"which is option$")
GIVEN = re.compile(r"which is option ([A-H])\b")


def parse_options(text: str) -> dict[str, str]:
    """``{"A": "benign colonic tissue", ...}`` from a question's option lines, or {} when there is no list of at
    least two options lettered from A in order."""
    found = OPTION_LINE.findall(text or "")
    letters = [letter for letter, _ in found]
    if len(found) < 2 or letters != [chr(ord("A") + i) for i in range(len(found))]:
        return {}
    return {letter: option.strip() for letter, option in found}


def named_option(sentence: str, options: dict[str, str]) -> str | None:
    """The letter of the one option whose text the sentence names (the longest, when one contains another:
    "oral squamous cell carcinoma" over "carcinoma"), or None."""
    low = sentence.lower()
    hits = [(len(text), letter) for letter, text in options.items() if text and text.lower() in low]
    if not hits:
        return None
    hits.sort(reverse=True)
    if len(hits) > 1 and hits[0][0] == hits[1][0]:
        return None
    longest = hits[0]
    # a shorter hit inside the longest is the same mention; any other is a second option named: ambiguous
    others = [letter for n, letter in hits[1:] if options[letter].lower() not in options[longest[1]].lower()]
    return None if others else longest[1]


class OptionGrounding(TokenGrounding):
    """``forced(new_token_ids) -> token id or None`` for one request's options."""

    def __init__(self, tokenizer, options: dict[str, str]):
        self.tokenizer, self.options = tokenizer, options
        self.spaced = {L: single_token(tokenizer, " " + L) for L in options}
        self.bare = {L: single_token(tokenizer, L) for L in options}

    @classmethod
    def for_prompt(cls, tokenizer, question: str) -> "OptionGrounding | None":
        options = parse_options(question)
        return cls(tokenizer, options) if options else None

    def forced(self, new_ids) -> int | None:
        """The token the next step must be, or None (free)."""
        text = self.text_if_ends(new_ids, ("n", ">"))  # the last token can end "which is option" or "<answer>"
        if text is None:
            return None
        if LOOKUP.search(text):
            sentence = re.split(r"(?<=[.!?])\s+", text[: -len("which is option")])[-1]
            letter = named_option(sentence, self.options)
            return self.spaced.get(letter) if letter else None
        if text.endswith("<answer>"):
            given = GIVEN.findall(text)
            return self.bare.get(given[-1]) if given and given[-1] in self.options else None
        return None


class GroundingLogitsProcessor(LogitsProcessor):
    """The same for ``model.generate`` over a (left-padded) batch: row ``i`` follows ``groundings[i]`` (None: free);
    ``prompt_width`` is the padded prompt length, after which a row's new tokens start."""

    def __init__(self, groundings: list, prompt_width: int):
        self.groundings, self.prompt_width = groundings, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for i, g in enumerate(self.groundings):
            if g is not None:
                scores[i] = g.apply(input_ids[i, self.prompt_width:].tolist(), scores[i])
        return scores


def grounding_kwargs(groundings: list, prompt_width: int) -> dict:
    """``generate`` keyword arguments for these rows' groundings: none when no row is grounded."""
    if not any(g is not None for g in groundings):
        return {}
    return {"logits_processor": LogitsProcessorList([GroundingLogitsProcessor(groundings, prompt_width)])}


def groundings_for(tokenizer, conversations: list, enabled: bool, verdicts: bool = False) -> list:
    """One grounding (or None) per conversation's last user message: an :class:`OptionGrounding` for a
    multiple-choice prompt when ``enabled``, a :class:`~pathvlm.vlm.verdict_grounding.VerdictGrounding` for a
    yes/no question about one class when ``verdicts``."""
    from pathvlm.vlm.verdict_grounding import VerdictGrounding

    out = []
    for c in conversations:
        text = last_user_text(c)
        g = OptionGrounding.for_prompt(tokenizer, text) if enabled else None
        if g is None and verdicts:
            g = VerdictGrounding.for_prompt(tokenizer, text)
        out.append(g)
    return out


def last_user_text(messages: list[dict]) -> str:
    """The text of the last user message (string content, or the text parts of a content list)."""
    for m in reversed(messages or []):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            return "\n".join(p.get("text") or "" for p in content or [] if isinstance(p, dict) and p.get("type") == "text")
    return ""
