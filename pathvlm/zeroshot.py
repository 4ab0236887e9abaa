"""Zero-shot classification with prompt ensembles (CONCH-style): classes x synonyms x templates.

Each class's text embedding is the normalised mean of its synonym-template prompts' normalised
embeddings; image-class logits are ``logit_scale * cos``, probabilities their softmax.
Prompt sets are JSON files in ``pathvlm/prompts`` (or any path) with ``classes`` (name -> synonyms)
and ``templates`` (strings with one ``{}``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from pathvlm.embed import embed_images, embed_texts
from pathvlm.errors import PathVLMError

PROMPT_DIR = Path(__file__).parent / "prompts"
DEFAULT_TEMPLATES_TASK = "crc100k"  # source of the generic pathology templates for typed classes


@dataclass
class PromptSet:
    name: str
    classes: dict[str, list[str]]
    templates: list[str]
    description: str = ""
    source: str = ""
    dataset_labels: dict[str, str] = field(default_factory=dict)  # dataset folder/label -> class name

    def __post_init__(self):
        if len(self.classes) < 2:
            raise PathVLMError(f"prompt set '{self.name}': zero-shot needs at least two classes, got {len(self.classes)}")
        for cls, syns in self.classes.items():
            if not cls.strip() or not syns or any(not s.strip() for s in syns):
                raise PathVLMError(f"prompt set '{self.name}': class {cls!r} has an empty name or synonym")
        if not self.templates or any(t.count("{}") != 1 for t in self.templates):
            raise PathVLMError(f"prompt set '{self.name}': every template needs exactly one '{{}}'")

    def prompts(self, ensemble: bool = True) -> dict[str, list[str]]:
        """Class -> prompt strings. Without ensembling: first synonym in the first template."""
        if not ensemble:
            return {c: [self.templates[0].format(s[0])] for c, s in self.classes.items()}
        return {c: [t.format(s) for s in syns for t in self.templates] for c, syns in self.classes.items()}


def list_prompt_sets() -> list[str]:
    return sorted(p.stem for p in PROMPT_DIR.glob("*.json"))


def load_prompt_set(name_or_path: str) -> PromptSet:
    """A shipped prompt set by name (``lc25000_colon``, ``crc100k``...) or a JSON file path."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.exists()):
        path = PROMPT_DIR / f"{name_or_path}.json"
        if not path.exists():
            raise PathVLMError(f"unknown task '{name_or_path}': choose one of {', '.join(list_prompt_sets())} or give a JSON file")
    try:
        data = json.loads(path.read_text())
        return PromptSet(
            name=data.get("name", path.stem), classes=data["classes"], templates=data["templates"],
            description=data.get("description", ""), source=data.get("source", ""),
            dataset_labels=data.get("dataset_labels", {}),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise PathVLMError(f"{path}: not a valid prompt set ({type(e).__name__}: {e})") from None


def prompt_set_from_names(names: str | Sequence[str], templates: Sequence[str] | None = None) -> PromptSet:
    """Typed classes: ``"a,b,c"`` or a list; ``"tumor|carcinoma"`` gives a class with synonyms."""
    if isinstance(names, str):
        names = names.split(",")
    classes: dict[str, list[str]] = {}
    for raw in names:
        syns = [s.strip() for s in raw.split("|") if s.strip()]
        if not syns:
            continue
        if syns[0] in classes:
            raise PathVLMError(f"class '{syns[0]}' is given twice")
        classes[syns[0]] = syns
    if templates is None:
        templates = load_prompt_set(DEFAULT_TEMPLATES_TASK).templates
    return PromptSet(name="custom", classes=classes, templates=list(templates))


class ZeroShotClassifier:
    """Classify images against a :class:`PromptSet` with a PathCLIP model."""

    def __init__(self, model, tokenizer, prompt_set: PromptSet, ensemble: bool = True, device="cpu"):
        self.model, self.tokenizer, self.prompt_set, self.device = model, tokenizer, prompt_set, device
        self.class_names = list(prompt_set.classes)
        self.weights = self._class_weights(ensemble)  # [C, D]

    @torch.inference_mode()
    def _class_weights(self, ensemble: bool) -> torch.Tensor:
        rows = []
        for prompts in self.prompt_set.prompts(ensemble).values():
            emb = embed_texts(self.model, self.tokenizer, prompts, device=self.device)
            rows.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
        return torch.stack(rows)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().clamp(max=100).item())

    def probabilities(self, image_features: torch.Tensor) -> torch.Tensor:
        """[N, D] normalised image embeddings -> [N, C] class probabilities."""
        return (self.logit_scale * image_features.float() @ self.weights.T).softmax(-1)

    def classify_files(self, paths: Sequence[str | os.PathLike], preprocess, top_k: int = 3, **embed_kwargs) -> list[dict]:
        feats = embed_images(self.model, preprocess, paths, strict=True, device=self.device, **embed_kwargs)
        probs = self.probabilities(feats)
        return [self.describe(str(p), row, top_k) for p, row in zip(paths, probs)]

    def describe(self, path: str, probs: torch.Tensor, top_k: int) -> dict:
        order = probs.argsort(descending=True)[: max(1, top_k)]
        return {
            "image": path,
            "prediction": self.class_names[int(order[0])],
            "top_k": [{"class": self.class_names[int(i)], "probability": round(float(probs[i]), 6)} for i in order],
            "probabilities": {c: round(float(p), 6) for c, p in zip(self.class_names, probs)},
        }
