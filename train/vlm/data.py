"""Stage datasets from a built recipe folder, in the layouts TRL's trainers take.

- align: ``images`` + ``messages`` (user: image + instruction, assistant: caption), from ``align/``;
- sft: ``images`` + ``messages`` with ``<think>...</think><answer>...</answer>`` answers, from ``sft/``,
  optionally with abstention copies (blank or noise image -> "cannot determine");
- grpo: ``image`` + conversational ``prompt`` + the answer columns the rewards read, from ``grpo/``,
  optionally with abstention copies whose verifiable answer is "cannot determine";
- text: ``text`` rows for continued pretraining of the language model.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from pathvlm.chat import CANNOT_DETERMINE
from pathvlm.data.inspect import load_split
from pathvlm.errors import PathVLMError

ABSTAIN_ANSWER = ("<think>The image shows no tissue that can be assessed: it is blank or noise, so no "
                  f"histological feature supports an answer.</think><answer>{CANNOT_DETERMINE}</answer>")
CLOSED_TASKS = ("mcq", "yes_no")


def _select(ds, cfg, n: int):
    if cfg.sources:
        ds = ds.filter(lambda s: s in cfg.sources, input_columns="source")
    if cfg.tasks and "task" in ds.column_names:
        ds = ds.filter(lambda t: t in cfg.tasks, input_columns="task")
    if n and n < len(ds):
        ds = ds.shuffle(seed=cfg.seed).select(range(n))
    if len(ds) == 0:
        raise PathVLMError(f"{cfg.data}: no rows left after the source/task filters")
    return ds


def control_image(kind: str, size: int = 224, seed: int = 0) -> Image.Image:
    """The image-dependence controls: a blank (white) slide or uniform RGB noise."""
    if kind == "blank":
        return Image.new("RGB", (size, size), (255, 255, 255))
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def align_dataset(cfg, split: str, n: int = 0):
    ds = _select(load_split(cfg.data, "align", split), cfg, n)

    def to_messages(row):
        return {"images": [row["image"]], "messages": [
            {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": row["prompt"]}]},
            {"role": "assistant", "content": [{"type": "text", "text": row["target"]}]}]}

    return ds.map(to_messages, remove_columns=ds.column_names, desc="align conversations")


def _abstention_copies(ds, cfg, is_closed, to_copy):
    """``abstain_fraction`` x len(ds) copies of closed questions with a blank or noise image in place of
    the tissue (alternating), made by ``to_copy(row, image, kind)``; returned shuffled into ``ds``."""
    from datasets import concatenate_datasets

    closed = ds.filter(is_closed)
    k = min(len(closed), max(1, int(round(cfg.abstain_fraction * len(ds)))))
    picks = closed.shuffle(seed=cfg.seed + 1).select(range(k))

    def abstain(row, idx):
        kind = "blank" if idx % 2 == 0 else "noise"
        return to_copy(row, control_image(kind, seed=cfg.seed + idx), kind)

    picks = picks.map(abstain, with_indices=True, desc="abstention copies").cast(ds.features)
    return concatenate_datasets([ds, picks]).shuffle(seed=cfg.seed)


def sft_dataset(cfg, split: str, n: int = 0):
    ds = _select(load_split(cfg.data, "sft", split), cfg, n)
    ds = ds.select_columns(["images", "messages", "task"])
    if cfg.abstain_fraction > 0:
        ds = _abstention_copies(ds, cfg, lambda row: row["task"] in CLOSED_TASKS, lambda row, image, kind: {
            "images": [image], "task": f"abstain_{kind}",
            "messages": row["messages"][:-1] + [{"role": "assistant", "content": [{"type": "text", "text": ABSTAIN_ANSWER}]}]})
    return ds.remove_columns(["task"])


def grpo_dataset(cfg, split: str, n: int = 0, screened=None):
    """GRPO prompts (``screened``: an optional ``dataset -> dataset`` choice made before the abstention
    copies, see ``train.vlm.screening``); with ``abstain_fraction``, copies of closed questions on a blank or noise image whose
    verifiable answer is "cannot determine" (answer type ``abstain``), so answering from the image pays
    and answering from the question alone does not."""
    ds = _select(load_split(cfg.data, "grpo", split), cfg, n)
    keep = [c for c in ("image", "prompt", "answer", "answer_type", "options", "label") if c in ds.column_names]
    ds = ds.select_columns(keep)
    if screened is not None:
        ds = screened(ds)
    if cfg.abstain_fraction > 0:
        ds = _abstention_copies(ds, cfg, lambda row: row["answer_type"] in ("option_letter", "yes_no"),
                                lambda row, image, kind: {"image": image, "answer": CANNOT_DETERMINE,
                                                          "answer_type": "abstain"})
    return ds


def text_dataset(folder: str, n: int, seed: int):
    ds = load_split(folder, "text", "train")
    if "text" not in ds.column_names:
        raise PathVLMError(f"{folder}: the text dataset has no 'text' column")
    if n and n < len(ds):
        ds = ds.shuffle(seed=seed).select(range(n))
    return ds.select_columns(["text"])


def closed_questions(cfg, split: str, n: int):
    """Held-out closed questions (option letter, yes/no) for the evaluation hook: a seeded, balanced subset."""
    ds = load_split(cfg.data, "grpo", split)
    ds = ds.filter(lambda t: t in ("option_letter", "yes_no"), input_columns="answer_type")
    if cfg.sources:
        ds = ds.filter(lambda s: s in cfg.sources, input_columns="source")
    if n and n < len(ds):
        ds = ds.shuffle(seed=1234).select(range(n))
    return ds
