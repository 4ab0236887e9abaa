"""Task registry: one YAML per task in ``evals/tasks/`` (or any path).

A task names its kind (zeroshot, linear_probe, few_shot, retrieval, stain_robustness with a PathCLIP;
vqa_closed, vqa_open, vqa, mcq, closed_qa, caption, report with the reasoner), its data
(a split of a built recipe, or an adapter over a local copy of a public dataset), its prompt set and
its settings. The images it uses are hashed, and a task can pin the expected hash: a run on other
data is refused instead of silently producing incomparable numbers.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from pathvlm.errors import PathVLMError
from pathvlm.yaml_io import read_yaml_mapping

TASK_DIR = Path(__file__).parent / "tasks"
EMBEDDING_KINDS = ("zeroshot", "linear_probe", "few_shot", "retrieval", "stain_robustness")
# kinds that run the reasoner (evals/generative.py); caption and report also load clip_model
GENERATIVE_KINDS = ("vqa_closed", "vqa_open", "vqa", "mcq", "closed_qa", "caption", "report")
KINDS = EMBEDDING_KINDS + GENERATIVE_KINDS


@dataclass
class Task:
    name: str
    kind: str
    dataset: dict
    description: str = ""
    source: str = ""
    prompts: str | None = None
    compare_single_prompt: bool = True
    train_split: str = "train"  # for probes
    shots: list = field(default_factory=lambda: [1, 4, 16])
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    expected_data_sha256: str | None = None
    seed: int = 0
    settings: dict = field(default_factory=dict)
    decoding: dict = field(default_factory=dict)  # reasoner kinds: max_new_tokens, temperature, top_p, seed
    clip_model: str = "pathclip-nano"  # caption/report: the PathCLIP that scores consistency

    @property
    def generative(self) -> bool:
        return self.kind in GENERATIVE_KINDS


def list_tasks() -> list[str]:
    return sorted(p.stem for p in TASK_DIR.glob("*.yaml"))


def load_task(name_or_path: str) -> Task:
    p = Path(name_or_path)
    if not (p.suffix in (".yaml", ".yml") and p.exists()):
        p = TASK_DIR / f"{name_or_path}.yaml"
    if not p.exists():
        raise PathVLMError(f"unknown eval task '{name_or_path}': choose from {', '.join(list_tasks())} or give a YAML file")
    data = read_yaml_mapping(p, "task")
    try:
        task = Task(**data)
    except TypeError as e:
        raise PathVLMError(f"{p}: {e}") from None
    if task.kind not in KINDS:
        raise PathVLMError(f"{p}: kind must be one of {KINDS}")
    return task


def data_hash(items: list[dict]) -> str:
    """Hash of the evaluated samples: ids, labels and image bytes, in order."""
    h = hashlib.sha256()
    for it in items:
        h.update(str(it["id"]).encode())
        h.update(str(it.get("label", "")).encode())
        h.update(hashlib.sha256(it["image"]).digest() if it.get("image") else b"-")
        if it.get("question") or it.get("answer"):  # question-answer items: the text is part of the data
            h.update(f"{it.get('question', '')}\x00{it.get('answer', '')}\x00{it.get('options', '')}".encode())
    return h.hexdigest()
