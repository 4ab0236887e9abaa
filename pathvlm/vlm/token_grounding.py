"""What option and verdict grounding share: forcing one token at chosen points of a decoded answer.

A grounding looks at the tokens a request has generated so far and names the one token the next step must
be, or None (the model chooses). :class:`TokenGrounding` gives every grounding the same two pieces: the
logit mask that forces the token (``apply``, used by the lean decoder, ``generate`` batches and the
llama.cpp path alike) and the hot-path gate (``text_if_ends``: the whole answer is decoded only when its
last token can end a phrase the grounding acts after).
"""
from __future__ import annotations

import torch


class TokenGrounding:
    """Subclasses set ``self.tokenizer`` and implement ``forced(new_ids) -> token id or None``."""

    tokenizer = None

    def forced(self, new_ids) -> int | None:
        raise NotImplementedError

    def text_if_ends(self, new_ids, endings: tuple[str, ...]) -> str | None:
        """The decoded answer so far when its last token ends with one of ``endings``, else None. Every step of
        every grounded request passes here, so the whole answer is decoded only at those tokens."""
        if not len(new_ids):
            return None
        if not self.tokenizer.decode([int(new_ids[-1])], skip_special_tokens=True).endswith(endings):
            return None
        return self.tokenizer.decode(list(map(int, new_ids)), skip_special_tokens=True)

    def apply(self, new_ids, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (vocab,) or (1, vocab) with every token but the forced one masked, when one is forced."""
        tid = self.forced(new_ids)
        if tid is None:
            return logits
        out = torch.full_like(logits, float("-inf"))
        out[..., tid] = logits[..., tid]
        return out


def single_token(tokenizer, text: str) -> int | None:
    """The id of ``text`` when the tokenizer writes it as one token, else None (nothing is forced then)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None
