"""Checks on request values that the models would otherwise trip over (a 400 with a message, not a 500)."""
from __future__ import annotations

from pathvlm.serving.errors import RequestError
from pathvlm.sampling import SEED_RANGE, effective_temperature, seed_in_range


def check_text(text: str, field: str) -> str:
    """``text`` if it is valid Unicode; JSON can carry lone surrogates (``"\\ud800"``) that no tokenizer
    can encode, so they are refused here, naming where they are."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RequestError(f"{field}: text holds an unpaired surrogate (U+{ord(text[e.start]):04X} at character "
                           f"{e.start}), which is not valid Unicode") from None
    return text


def generation_params(temperature=0.0, top_p=1.0, seed=None) -> dict:
    """Sampling settings checked and normalised the way vLLM does: temperature below 1e-5 means greedy,
    between 1e-5 and 1e-2 it is raised to 1e-2; the seed must fit torch's 64-bit generator."""
    try:
        temperature = float(temperature if temperature is not None else 0.0)
        top_p = float(top_p if top_p is not None else 1.0)
    except (TypeError, ValueError):
        raise RequestError("temperature and top_p must be numbers") from None
    if not 0.0 <= temperature <= 2.0:
        raise RequestError(f"temperature must be between 0 and 2, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise RequestError(f"top_p must be in (0, 1], got {top_p}")
    if isinstance(seed, bool) or not seed_in_range(seed):
        raise RequestError(f"seed must be an integer between {SEED_RANGE[0]} and {SEED_RANGE[1]}, got {seed!r}")
    return {"temperature": effective_temperature(temperature), "top_p": top_p, "seed": seed}
