"""Verdict grounding: a yes/no answer agrees with the class the reasoning's own description shows.

pathvlm-nano answers "Is this oral squamous cell carcinoma? Answer yes or no." by describing the tile and then
giving a verdict: "<think>[features] These features are (not) those of oral squamous cell carcinoma.</think>
<answer>yes|no</answer>". On held-out oral tiles its description is usually right and its verdict often is not:
it describes normal mucosa (intact surface, orderly maturation, rete ridges) and then affirms the carcinoma
the question asked about. Grounding makes the verdict follow the description at decoding time:

- after "These features are" the next token is forced to " those" when the features described so far point
  to the class the question asks about and to " not" when they point to another class. "The features point
  to" is :func:`pathvlm.evals.consistency.described`, the same reading the self-consistency metric uses:
  words that only one class's knowledge-base descriptions use, at least two of them and twice any other
  class's. When the description points nowhere clearly, the model chooses as usual;
- after "<answer>" the next token is forced to the yes or no that the verdict sentence gave ("are those of
  [the asked class]": yes; "are not those of" it, or "are those of" another class: no).

The class is still the model's own: the description is its, and a tile it describes wrongly gets a wrong
answer that at least agrees with what it wrote. Only yes/no questions about one class of the knowledge base
("Is this X? Answer yes or no.") are grounded, and only in the verdict phrase pathvlm-nano is trained to write;
any other prompt or phrasing is never constrained. Opt-in in the library (``ground_verdicts=True``), on in
``pathvlm chat`` and ``pathvlm serve``.
"""
from __future__ import annotations

import re

from pathvlm.vlm.token_grounding import TokenGrounding, single_token

VERDICT_OPENING = "These features are"
VERDICT = re.compile(r"These features are (not )?those of ([^.<]*)")
ANSWER_YES_NO = re.compile(r"answer\s+yes\s+or\s+no", re.I)


def asked_class(question: str, vocab) -> str | None:
    """The one knowledge-base class a yes/no question asks about ("Is this X? Answer yes or no."), or None."""
    from pathvlm.evals.consistency import ASKED, claims

    if not ANSWER_YES_NO.search(question or ""):
        return None
    m = ASKED.search(question)
    if not m:
        return None
    named = claims(m.group(1), vocab).classes
    return next(iter(named)) if len(named) == 1 else None


def shown_class(reasoning: str, vocab) -> str | None:
    """The class the features of ``reasoning`` (the text before the verdict; from its last ``<think>``) point to,
    or None when they point nowhere clearly (:func:`pathvlm.evals.consistency.described`)."""
    from pathvlm.evals.consistency import described

    return described(reasoning.rsplit("<think>", 1)[-1], vocab)[0]


class VerdictGrounding(TokenGrounding):
    """``forced(new_token_ids) -> token id or None`` for one yes/no question about ``asked``."""

    def __init__(self, tokenizer, asked: str, vocab):
        self.tokenizer, self.asked, self.vocab = tokenizer, asked, vocab
        self.those, self.not_ = single_token(tokenizer, " those"), single_token(tokenizer, " not")
        self.yes, self.no = single_token(tokenizer, "yes"), single_token(tokenizer, "no")

    @classmethod
    def for_prompt(cls, tokenizer, question: str, vocab=None) -> "VerdictGrounding | None":
        from pathvlm.evals.consistency import vocabulary

        vocab = vocab or vocabulary()
        asked = asked_class(question, vocab)
        return cls(tokenizer, asked, vocab) if asked else None

    def forced(self, new_ids) -> int | None:
        """The token the next step must be, or None (free)."""
        text = self.text_if_ends(new_ids, ("are", ">"))  # the last token can end "These features are" or "<answer>"
        if text is None:
            return None
        if text.endswith(VERDICT_OPENING):
            return self._verdict(text[: -len(VERDICT_OPENING)])
        if text.endswith("<answer>"):
            return self._answer(text)
        return None

    def _verdict(self, reasoning: str) -> int | None:
        shown = shown_class(reasoning, self.vocab)
        if shown is None:
            return None
        return self.those if shown == self.asked else self.not_

    def _answer(self, text: str) -> int | None:
        from pathvlm.evals.consistency import claims

        found = VERDICT.findall(text)
        if not found:
            return None
        negated, named = found[-1]
        classes = claims(named, self.vocab).classes
        if classes and self.asked not in classes:  # a verdict about another class
            return self.no if not negated else None
        return self.no if negated else self.yes
