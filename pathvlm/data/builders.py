"""Builders: curated rows -> training sets for each stage.

- ``clip``: image-text pairs (labelled images get varied captions from the knowledge base);
- ``align``: captioning pairs and structured report targets;
- ``sft``: TRL conversational format with images, answers as ``<think>...</think><answer>...</answer>``;
- ``grpo``: prompts with verifiable answers (option letter, yes/no, class) and the fields rewards need.

Every choice is drawn from a RNG seeded by (recipe seed, builder, row id), so a row's output does
not depend on the order or number of other rows.
"""
from __future__ import annotations

import random
import string

from pathvlm.data.knowledge import KnowledgeBase

FORMAT_INSTRUCTION = ("Think step by step inside <think></think>, then give the final answer inside "
                      "<answer></answer>.")


def _rng(seed: int, builder: str, row_id: str, n: int = 0) -> random.Random:
    return random.Random(f"{seed}:{builder}:{row_id}:{n}")


def _base(row: dict) -> dict:
    return {k: row[k] for k in ("source", "licence", "group", "split")}


def _power(row: dict) -> str | None:
    """The magnification the source gives for the row's image (``100x``...), if any."""
    return (row.get("meta") or {}).get("magnification")


def cot(observations: str, answer: str) -> str:
    return f"<think>{observations}</think><answer>{answer}</answer>"


def user(text: str, image: bool = True) -> dict:
    content = ([{"type": "image", "text": None}] if image else []) + [{"type": "text", "text": text}]
    return {"role": "user", "content": content}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def option_lines(options: list[str]) -> str:
    """``A. first\nB. second ...``: how every multiple-choice prompt lists its options."""
    return "\n".join(f"{string.ascii_uppercase[i]}. {o}" for i, o in enumerate(options))


def mcq_text(question: str, options: list[str]) -> str:
    return f"{question}\n{option_lines(options)}"


def yes_no_text(asked: str) -> str:
    """The closed question about one class; GRPO's counterparts (train/vlm/data.py) turn it to another."""
    return f"Is this {asked}? Answer yes or no."


def build_clip(rows, kb: KnowledgeBase, seed: int, captions_per_image: int = 1):
    for row in rows:
        if row["image"] is None:
            continue
        if row["task"] == "classification":
            for n in range(captions_per_image):
                yield {"id": f"{row['id']}-c{n}", "image": row["image"], "text": kb.caption(row["label"], _rng(seed, "clip", row["id"], n), _power(row)),
                       "label": row["label"], **_base(row)}
        elif row["task"] == "caption" and row["text"]:
            yield {"id": row["id"], "image": row["image"], "text": row["text"], "label": row["label"], **_base(row)}


def build_align(rows, kb: KnowledgeBase, seed: int):
    for row in rows:
        if row["image"] is None:
            continue
        if row["task"] == "classification":
            rng = _rng(seed, "align", row["id"])
            yield {"id": f"{row['id']}-cap", "image": row["image"], "task": "caption",
                   "prompt": "Describe the histological features of this image.", "target": kb.caption(row["label"], rng, _power(row)), **_base(row)}
            yield {"id": f"{row['id']}-rep", "image": row["image"], "task": "report",
                   "prompt": "Write a structured pathology report for this image.", "target": kb.report(row["label"], _power(row)), **_base(row)}
        elif row["task"] == "caption" and row["text"]:
            yield {"id": row["id"], "image": row["image"], "task": "caption",
                   "prompt": "Describe the histological features of this image.", "target": row["text"], **_base(row)}


def _sft(row, task, question, answer_text):
    return {"id": f"{row['id']}-{task}", "images": [row["image"]] if row["image"] is not None else [],
            "messages": [user(question, row["image"] is not None), assistant(answer_text)], "task": task, **_base(row)}


def build_sft(rows, kb: KnowledgeBase, seed: int):
    for row in rows:
        rid = row["id"]
        if row["task"] == "classification" and row["image"] is not None:
            label, e = row["label"], kb.entry(row["label"])
            rng = _rng(seed, "sft", rid)
            obs = kb.observations(label, _power(row))
            # closed yes/no: half the time about the true class, half about another one
            asked = label if rng.random() < 0.5 else rng.choice([c for c in kb.classes if c != label])
            yes = asked == label
            verdict = f"These features {'are' if yes else 'are not'} those of {asked}."
            yield _sft(row, "yes_no", f"{yes_no_text(asked)} {FORMAT_INSTRUCTION}",
                       cot(f"{obs} {verdict}", "yes" if yes else "no"))
            options, correct = kb.options(label, rng)
            letter = string.ascii_uppercase[correct]
            # the reasoning names the option it picked, so the final letter is copied rather than recalled
            yield _sft(row, "mcq", mcq_text(f"Which diagnosis best fits this {e['stain']} image?", options)
                       + f"\n{FORMAT_INSTRUCTION}", cot(f"{obs} This fits {label}, which is option {letter}.", letter))
            yield _sft(row, "open", f"What does this image show? {FORMAT_INSTRUCTION}", cot(obs, label))
            yield _sft(row, "report", "Write a structured pathology report for this image.",
                       cot(obs, kb.report(label, _power(row))))
        elif row["task"] in ("vqa_closed", "vqa_open"):
            # no rationale is published for these answers: the think block carries only what the source gives
            yield _sft(row, row["task"], f"{row['question']} {FORMAT_INSTRUCTION}", cot(row["rationale"], row["answer"]))
        elif row["task"] == "mcq":
            yield _sft(row, "mcq", mcq_text(row["question"], row["options"]) + f"\n{FORMAT_INSTRUCTION}",
                       cot(row["rationale"], row["answer"]))
        elif row["task"] == "caption" and row["text"] and row["image"] is not None:
            yield _sft(row, "describe", "Describe the histological features of this image.", row["text"])


def _grpo(row, kind, question, answer, answer_type, options=None):
    return {"id": f"{row['id']}-{kind}", "image": row["image"],
            "prompt": [user(f"{question}\n{FORMAT_INSTRUCTION}", row["image"] is not None)],
            "answer": answer, "answer_type": answer_type, "options": options or [], "label": row["label"],
            "task": kind, **_base(row)}


def build_grpo(rows, kb: KnowledgeBase, seed: int):
    for row in rows:
        if row["image"] is None:
            continue
        if row["task"] == "classification":
            rng = _rng(seed, "grpo", row["id"])
            label, e = row["label"], kb.entry(row["label"])
            options, correct = kb.options(label, rng)
            yield _grpo(row, "mcq", mcq_text(f"Which diagnosis best fits this {e['stain']} image?", options),
                        string.ascii_uppercase[correct], "option_letter", options)
            asked = label if rng.random() < 0.5 else rng.choice([c for c in kb.classes if c != label])
            yield _grpo(row, "yes_no", yes_no_text(asked), "yes" if asked == label else "no", "yes_no")
            yield _grpo(row, "class", "Which tissue class is shown? Answer with the class name only.", label,
                        "class", list(kb.classes))
        elif row["task"] == "vqa_closed":
            yield _grpo(row, "yes_no", row["question"], row["answer"].lower(), "yes_no")
        elif row["task"] == "mcq":
            yield _grpo(row, "mcq", mcq_text(row["question"], row["options"]), row["answer"], "option_letter", row["options"])


def build_text(rows, kb: KnowledgeBase, seed: int):
    """Text-only corpus (cleaned, visually filtered captions) for the language model's warm-up."""
    for row in rows:
        if row["task"] == "caption" and row["text"]:
            yield {"id": row["id"], "text": row["text"], **_base(row)}


BUILDERS = {"clip": build_clip, "align": build_align, "sft": build_sft, "grpo": build_grpo, "text": build_text}
