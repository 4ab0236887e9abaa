"""What model cards prescribe that a checkpoint's files do not carry: a default system prompt per model.

A reasoner gets the system prompt of the first entry whose name pattern occurs in its source (the folder or
hub-cache path, case-insensitive) or in its config's ``_name_or_path``. A request's own system message (or
``--system`` / the web app's system field / ``role: system`` in the API) always wins. A folder can also ship
``pathvlm_reasoner.json`` with ``{"system_prompt": "..."}`` to set one for any model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# Patho-R1 is trained (SFT on chain-of-thought, then GRPO/DAPO) to answer as <think>...</think><answer>...</answer>
# and its card runs it with an R1-style system prompt asking for that format; without one the tags are often
# missing. This is the R1 / R1-V form of that prompt (the gated card could not be read offline here, so the
# wording is the standard one the format comes from; pass --system to use the card's text verbatim).
R1_THINK_ANSWER = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant "
    "first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think><answer> answer here </answer>")


@dataclass(frozen=True)
class ModelCard:
    pattern: str  # lower-case substring of the source path or _name_or_path
    system_prompt: str
    source: str  # where the prescription comes from


MODEL_CARDS = [
    ModelCard("patho-r1", R1_THINK_ANSWER, "Patho-R1 model cards (WenchuanZhang/Patho-R1-3B, -7B): <think>/<answer> output"),
]


def default_system_prompt(source: str, model=None) -> str | None:
    """The system prompt a model's card prescribes, or None."""
    folder = Path(str(source)).expanduser()
    sidecar = folder / "pathvlm_reasoner.json"
    if sidecar.is_file():
        try:
            prompt = json.loads(sidecar.read_text()).get("system_prompt")
        except (ValueError, AttributeError):
            prompt = None
        if isinstance(prompt, str) and prompt.strip():
            return prompt
    names = [str(source).lower()]
    name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None)
    if name_or_path:
        names.append(str(name_or_path).lower())
    for card in MODEL_CARDS:
        if any(card.pattern in n for n in names):
            return card.system_prompt
    return None
