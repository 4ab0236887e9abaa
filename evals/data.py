"""Loading a task's samples: from a built recipe split (identical to what training held out) or from
a public dataset's layout through the data-recipe adapters."""
from __future__ import annotations

import os
from pathlib import Path

from pathvlm.errors import PathVLMError


class DataMissing(PathVLMError):
    """A task's data is not on this machine (a public dataset not downloaded, or ../shared absent)."""


def _expand(value: str, hint: str = "") -> str:
    from pathvlm.data.config import expand_vars
    from pathvlm.paths import shared_data

    shared = shared_data()
    try:
        return expand_vars(value, {"SHARED": str(shared)} if shared else {})
    except PathVLMError as e:
        raise DataMissing(f"dataset not found: {e}; {hint or 'see the task description'}") from None


def _built_rows(spec: dict, split: str) -> list[dict]:
    """Rows of ``<build_dir>/<dataset>/<split>``, building the recipe first if needed."""
    import pyarrow.parquet as pq

    build_dir = Path(_expand(spec.get("build_dir", "runs/data/nano"), spec.get("download_hint", "")))
    dataset = spec.get("dataset", "clip")
    if not (build_dir / dataset).exists():
        from pathvlm.data.build import build_recipe
        from pathvlm.data.config import load_recipe

        recipe = spec.get("recipe")
        if not recipe:
            raise DataMissing(f"{build_dir}/{dataset} does not exist and the task names no recipe to build it")
        try:
            build_recipe(load_recipe(recipe), build_dir, progress=False, recipe_path=recipe)
        except PathVLMError as e:
            raise DataMissing(f"{build_dir}/{dataset} does not exist and building {recipe} failed: {e}") from None
    rows = []
    for f in sorted((build_dir / dataset).glob(f"{split}-*.parquet")):
        rows += pq.read_table(f).to_pylist()
    if dataset in ("grpo", "align", "sft"):
        return _qa_rows(rows, spec)
    sources = spec.get("sources")
    exclude = set(spec.get("exclude_sources", []))
    out, seen = [], set()
    for r in rows:
        if (sources and r["source"] not in sources) or r["source"] in exclude:
            continue
        key = r["id"].rsplit("-c", 1)[0]  # one row per image (labelled images carry several captions)
        if key in seen and not spec.get("keep_all_captions"):
            continue
        seen.add(key)
        out.append({"id": key, "image": r["image"]["bytes"], "label": r.get("label") or "", "text": r.get("text", ""),
                    "group": r["group"], "source": r["source"]})
    return out


def _prompt_text(prompt) -> str:
    """The user's text from a TRL conversational prompt (or a plain string)."""
    if isinstance(prompt, str):
        return prompt
    for turn in prompt or []:
        if turn.get("role") == "user":
            content = turn.get("content")
            if isinstance(content, str):
                return content
            return "\n".join(c.get("text") or "" for c in content if c.get("type") == "text")
    return ""


SFT_ANSWER_TYPES = {"open": "open", "yes_no": "yes_no", "mcq": "option_letter", "report": "report",
                    "vqa_open": "open", "vqa_closed": "yes_no", "describe": "caption"}


def _sft_row(r: dict) -> dict:
    """A built ``sft`` row (a conversation) as a question-answer row: the user's text, the final answer of
    the assistant's target (the whole target is kept as ``target``, reasoning included)."""
    from pathvlm.evals.answers import answer_span
    from pathvlm.evals.consistency import options_in

    msgs = r.get("messages") or []
    question = _prompt_text([m for m in msgs if m.get("role") == "user"][:1])
    target = "\n".join(_prompt_text([{**m, "role": "user"}]) for m in msgs if m.get("role") == "assistant")
    kind = SFT_ANSWER_TYPES.get(r.get("task", ""), "")
    answer = answer_span(target)
    images = r.get("images") or []
    return {**r, "image": images[0] if images else None, "prompt": question, "answer_type": kind,
            "answer": answer, "target": target, "options": options_in(question) if kind == "option_letter" else []}


def _qa_rows(rows: list[dict], spec: dict) -> list[dict]:
    """Question-answer items from a built ``grpo`` split (verifiable answers: option letter, yes/no,
    class), ``align`` split (caption and report targets) or ``sft`` split (open, yes/no, MCQ and report
    questions with reasoning targets), filtered by ``sources``, ``tasks`` and ``answer_types``, sorted by id."""
    sources, tasks, types = spec.get("sources"), spec.get("tasks"), spec.get("answer_types")
    out = []
    for r in rows:
        if "messages" in r:
            r = _sft_row(r)
            if r["image"] is None:
                continue
        answer_type = r.get("answer_type") or r.get("task")  # align rows: caption | report
        if (sources and r["source"] not in sources) or (tasks and r.get("task") not in tasks) \
                or (types and answer_type not in types):
            continue
        out.append({"id": r["id"], "image": r["image"]["bytes"], "question": _prompt_text(r.get("prompt")),
                    "answer": r.get("answer") if "answer" in r else r.get("target", ""), "answer_type": answer_type,
                    "options": list(r.get("options") or []), "label": r.get("label") or "", "text": r.get("target", ""),
                    "task": r.get("task", ""), "group": r["group"], "source": r["source"], "prompt_from_data": True})
    out.sort(key=lambda r: r["id"])
    return out[:spec["max_samples"]] if spec.get("max_samples") else out


def _adapter_rows(spec: dict, split: str) -> list[dict]:
    from pathvlm.data.sources import Malformed, get_adapter

    root = _expand(spec["root"], spec.get("download_hint", "")) if spec.get("root") else None
    if root and not os.path.exists(root):
        raise DataMissing(f"dataset not found at {root}: {spec.get('download_hint', 'see the task description')}")
    info = get_adapter(spec["adapter"])
    label_map = spec.get("label_map", {})
    out = []
    for rec in info.read(root, **spec.get("options", {})) if root else info.read(**spec.get("options", {})):
        if isinstance(rec, Malformed):
            continue
        if spec.get("split_from") == "source" and rec.source_split and rec.source_split != split:
            continue
        data, standin = _record_image(rec, spec)
        out.append({"id": rec.key, "image": data, "label": label_map.get(rec.label, rec.label), "text": rec.text,
                    "group": rec.group, "source": spec["adapter"], "question": rec.question, "answer": rec.answer,
                    "options": list(rec.options), "task": rec.task, "image_standin": standin})
    out = sorted(out, key=lambda r: r["id"])
    return out[:spec["max_samples"]] if spec.get("max_samples") else out


def _record_image(rec, spec: dict) -> tuple[bytes | None, bool]:
    """The record's image bytes. A text-only copy of a corpus (PathVQA or ARCH text without their
    images, as in ../shared) can be evaluated blind with ``missing_images: blank``: a white stand-in,
    flagged in the results; otherwise a missing image is an error naming the file."""
    if rec.image_bytes is not None:
        return rec.image_bytes, False
    if rec.image_path and Path(rec.image_path).exists():
        return Path(rec.image_path).read_bytes(), False
    if spec.get("missing_images") == "blank":
        return blank_png(), True
    raise PathVLMError(f"image not found: {rec.image_path} (record {rec.key}); "
                       "set missing_images: blank in the task to evaluate the text blind")


def blank_png(size: int = 224) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (255, 255, 255)).save(buf, format="PNG")
    return buf.getvalue()


def load_split(spec: dict, split) -> list[dict]:
    """Samples of one split, or of several (``split: [train, val, test]``) concatenated."""
    if isinstance(split, (list, tuple)):
        return [row for s in split for row in load_split(spec, s)]
    kind = spec.get("kind", "built")
    if kind == "built":
        return _built_rows(spec, split)
    if kind == "adapter":
        return _adapter_rows(spec, split)
    raise PathVLMError(f"dataset kind must be built or adapter, not {kind!r}")
