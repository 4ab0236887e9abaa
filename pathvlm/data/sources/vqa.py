"""Question-answering sources: PathVQA, PathMMU and Quilt-VQA in their published layouts."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from pathvlm.data.sources.registry import Malformed, Record, adapter
from pathvlm.data.sources._io import iter_table, read_json

YES_NO = {"yes", "no"}


@adapter("pathvqa", "MIT (questions); images belong to their publishers: research use",
         "PathVQA (He et al. 2020): pvqa_<split>.json question lists per image", "https://github.com/UCSD-AI4H/PathVQA")
def read_pathvqa(root, split: str = "train", file: str | None = None,
                 image_name: str = "images/{split}/{img_id}.jpg") -> Iterator[Record | Malformed]:
    """``pvqa_<split>.json``: [{img_id, sentf: {pvqa: [questions]}, labelf: {pvqa: [{answer: 1}]}}];
    questions and answers are aligned by index. All questions about one image share a group."""
    root = Path(root)
    file = file or f"pvqa_{split}.json"
    data = read_json(root / file)
    for n, item in enumerate(data):
        img = item.get("img_id") if isinstance(item, dict) else None
        if not img:
            yield Malformed("missing image id", f"{file}[{n}]")
            continue
        questions = (item.get("sentf") or {}).get("pvqa") or []
        answers = (item.get("labelf") or {}).get("pvqa") or []
        if len(questions) != len(answers):
            yield Malformed("questions and answers not aligned", f"{file}[{n}] {img}")
            continue
        for q_no, (q, a) in enumerate(zip(questions, answers)):
            answer = next(iter(a), "") if isinstance(a, dict) else str(a)
            if not q or not answer:
                yield Malformed("empty question or answer", f"{file}[{n}] {img} #{q_no}")
                continue
            closed = answer.strip().lower() in YES_NO
            yield Record(key=f"{img}-{q_no}", group=f"pathvqa-{img}", question=q.strip(), answer=answer.strip(),
                         task="vqa_closed" if closed else "vqa_open",
                         image_path=str(root / image_name.format(split=split, img_id=img)), source_split=split)


LETTER = re.compile(r"^\s*\(?([A-J])[).:]\s*")


@adapter("pathmmu", "CC BY-ND 4.0 (PathMMU); images per subset's source", "PathMMU (Sun et al. 2024): multiple choice",
         "https://huggingface.co/datasets/jamessyx/PathMMU")
def read_pathmmu(root, file: str = "data.json", subsets: list[str] | None = None, splits: list[str] | None = None,
                 image_dir: str = ".") -> Iterator[Record | Malformed]:
    """``data.json``: {subset: {split: [{question, options ["A) ..."], answer "B) ...", explanation,
    img|source_img}]}}."""
    root = Path(root)
    data = read_json(root / file)
    for subset, by_split in data.items():
        if subsets and subset not in subsets:
            continue
        for split, items in by_split.items():
            if splits and split not in splits:
                continue
            for n, item in enumerate(items):
                where = f"{file}:{subset}/{split}[{n}]"
                img = item.get("img") or item.get("source_img") or item.get("image")
                options = item.get("options") or []
                m = LETTER.match(item.get("answer") or "")
                if not img or len(options) < 2 or not m:
                    yield Malformed("missing image, options or answer letter", where)
                    continue
                opts = [LETTER.sub("", o).strip() for o in options]
                yield Record(key=f"{subset}-{split}-{n}", group=f"pathmmu-{img}", question=item.get("question", ""),
                             options=opts, answer=m.group(1), task="mcq", rationale=item.get("explanation") or "",
                             image_path=str(root / image_dir / img), source_split=split, meta={"subset": subset})


@adapter("quilt_vqa", "research use (Quilt-VQA terms)", "Quilt-VQA (Seyfioglu et al. 2024): LLaVA-style QA jsonl/json",
         "https://huggingface.co/datasets/wisdomik/Quilt_VQA")
def read_quilt_vqa(root, file: str = "quiltvqa_test_w_ans.json", image_dir: str = "images") -> Iterator[Record | Malformed]:
    """Rows {question_id, image, text (question), answer, answer_type: open|closed}."""
    root = Path(root)
    for row in iter_table(root / file):
        if isinstance(row, Malformed):
            yield row
            continue
        img, q, a = row.get("image"), row.get("text") or row.get("question"), row.get("answer")
        if not img or not q or not a:
            yield Malformed("missing image, question or answer", f"{file}:{row['_line']}")
            continue
        closed = str(row.get("answer_type", "")).lower() == "closed" or str(a).strip().lower() in YES_NO
        yield Record(key=str(row.get("question_id", row["_line"])), group=f"quiltvqa-{img}", question=q, answer=str(a),
                     task="vqa_closed" if closed else "vqa_open", image_path=str(root / image_dir / img))
