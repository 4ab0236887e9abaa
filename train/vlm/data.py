"""Stage datasets from a built recipe folder, in the layouts TRL's trainers take.

- align: ``images`` + ``messages`` (user: image + instruction, assistant: caption), from ``align/``;
- sft: ``images`` + ``messages`` with ``<think>...</think><answer>...</answer>`` answers, from ``sft/``,
  optionally with abstention copies (blank or noise image -> "cannot determine");
- grpo: ``image`` + conversational ``prompt`` + the answer columns the rewards read, from ``grpo/``,
  optionally with the multiple-choice letters balanced, same-image counterparts with the other answer,
  and abstention copies whose verifiable answer is "cannot determine";
- text: ``text`` rows for continued pretraining of the language model.
"""
from __future__ import annotations

import re
import string

import numpy as np
from PIL import Image

from pathvlm.chat import CANNOT_DETERMINE
from pathvlm.data.builders import option_lines, yes_no_text
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


def _replace_in_question(row: dict, old: str, new: str) -> list:
    """A copy of ``row["prompt"]`` whose one text part holding ``old`` holds ``new`` instead."""
    prompt = [dict(m) for m in row["prompt"]]
    parts = [dict(c) for c in prompt[-1]["content"]]
    texts = [c for c in parts if c.get("type") == "text" and old in (c.get("text") or "")]
    if len(texts) != 1:
        raise PathVLMError(f"row {row.get('id', '?')}: {old!r} is not listed in its question")
    texts[0]["text"] = texts[0]["text"].replace(old, new, 1)
    prompt[-1]["content"] = parts
    return prompt


def rotate_options(row: dict, target: int) -> dict:
    """The multiple-choice ``row`` with its options rotated so the right one is option ``target`` (0 = A):
    prompt text, ``options`` and ``answer`` move together; the distractors keep their cyclic order."""
    options = list(row["options"])
    shift = (target - string.ascii_uppercase.index(row["answer"])) % len(options)
    turned = options[-shift:] + options[:-shift] if shift else options
    return {**row, "prompt": _replace_in_question(row, option_lines(options), option_lines(turned)),
            "options": turned, "answer": string.ascii_uppercase[target]}


def balance_option_letters(ds, seed: int):
    """Rotate the options of the multiple-choice rows so the right letters are spread evenly (A, B, C, D, A,
    ... in a seeded order). Screening picks the prompts the policy missed, and those cluster on a few
    letters (C and D for pathvlm-nano's SFT stage); trained on them as they are, GRPO learns that the late
    letters pay and drifts there on every question. Balanced, only reading the options pays."""
    import random

    mcq = [i for i, t in enumerate(ds["answer_type"]) if t == "option_letter"]
    if not mcq:
        return ds
    sizes = [len(o) for o in ds.select(mcq)["options"]]
    targets = [j % min(sizes) for j in range(len(mcq))]
    random.Random(seed).shuffle(targets)
    target_of = dict(zip(mcq, targets))
    return ds.map(lambda row, i: rotate_options(row, target_of[i]) if i in target_of else row,
                  with_indices=True, desc="balance option letters")


YES_NO_QUESTION = re.compile("^" + re.escape(yes_no_text("@@")).replace("@@", "(?P<asked>.+?)"))


def _asked(prompt) -> str | None:
    m = YES_NO_QUESTION.match(prompt[-1]["content"][-1].get("text") or "")
    return m.group("asked") if m else None


def counterpart(row: dict, classes: list[str], rng) -> dict | None:
    """The same image with the question turned so the other answer is right: a yes/no question about the
    tissue's own class <-> one about another class; a multiple-choice question with the right option moved
    two letters on. ``None`` where the row cannot be turned (a free-text question, an unknown label)."""
    if row["answer_type"] == "option_letter":
        k = len(row["options"])
        return rotate_options(row, (string.ascii_uppercase.index(row["answer"]) + k // 2) % k)
    asked, label = (_asked(row["prompt"]), row.get("label")) if row["answer_type"] == "yes_no" else (None, None)
    if asked is None or not label:
        return None
    if row["answer"] == "yes":
        others = [c for c in classes if c != label]
        if not others:
            return None
        turned, answer = rng.choice(others), "no"
    else:
        turned, answer = label, "yes"
    return {**row, "prompt": _replace_in_question(row, yes_no_text(asked), yes_no_text(turned)), "answer": answer}


def add_counterparts(ds, seed: int):
    """``ds`` plus, for every closed question that can be turned, its counterpart on the same image (see
    ``counterpart``). Balanced pairs are the VQA v2 answer to language priors: a policy that drifts to
    "no" or to one letter loses on one question of every pair, so GRPO's advantages push back, and only
    reading the image pays on both."""
    import random

    from datasets import Dataset

    rng = random.Random(seed)
    yes_no = [(p, lab) for p, lab, t in zip(ds["prompt"], ds["label"], ds["answer_type"]) if t == "yes_no"]
    classes = sorted({lab for _, lab in yes_no if lab} | {a for a in (_asked(p) for p, _ in yes_no) if a})
    rows = []
    for row in ds:
        rows.append(row)
        turned = counterpart(row, classes, rng)
        if turned is not None:
            rows.append(turned)
    return Dataset.from_list(rows, features=ds.features)


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
    if cfg.balance_letters:
        ds = balance_option_letters(ds, cfg.seed)
    if cfg.counterparts:
        ds = add_counterparts(ds, cfg.seed)
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
