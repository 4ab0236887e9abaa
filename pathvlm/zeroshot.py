"""Zero-shot classification with prompt ensembles (CONCH-style): classes x synonyms x templates.

Each class's text embedding is the normalised mean of its synonym-template prompts' normalised
embeddings; image-class logits are ``logit_scale * cos``, probabilities their softmax.
Prompt sets are JSON files in ``pathvlm/prompts`` (or any path) with ``classes`` (name -> synonyms)
and ``templates`` (strings with one ``{}``).
"""
from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
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

    def class_of(self, label: str) -> str | None:
        """The class a sample's label belongs to: the label itself when it is a class, else its ``dataset_labels``
        entry (a folder name, or a finer class folded into a coarser one, e.g. oral squamous cell carcinoma ->
        squamous cell carcinoma), else None (not part of this task)."""
        if label in self.classes:
            return label
        mapped = self.dataset_labels.get(label)
        return mapped if mapped in self.classes else None

    def prompts(self, ensemble: bool = True) -> dict[str, list[str]]:
        """Class -> prompt strings. Without ensembling: first synonym in the first template."""
        if not ensemble:
            return {c: [self.templates[0].format(s[0])] for c, s in self.classes.items()}
        return {c: [t.format(s) for s in syns for t in self.templates] for c, syns in self.classes.items()}

    def n_prompts(self, ensemble: bool = True) -> int:
        """How many prompts embedding this set takes (classes x synonyms x templates), without building them."""
        if not ensemble:
            return len(self.classes)
        return sum(len(s) for s in self.classes.values()) * len(self.templates)


def list_prompt_sets() -> list[str]:
    return sorted(p.stem for p in PROMPT_DIR.glob("*.json"))


def load_shipped_prompt_set(name: str) -> PromptSet:
    """A prompt set shipped with pathvlm, by name only (what a server accepts: never a path)."""
    names = list_prompt_sets()
    if not isinstance(name, str) or name not in names:
        raise PathVLMError(f"unknown task {str(name)[:100]!r}: a preset is the name of a shipped prompt set, one of "
                           f"{', '.join(names)}")
    return load_prompt_set(name)


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


class ClassEmbeddingCache:
    """LRU cache of class embeddings (the normalised mean of a class's prompt embeddings), keyed by the
    class's prompts: typed label sets that share classes, and repeated requests, embed each class once.
    One cache per model (the key does not name the model). Thread-safe."""

    def __init__(self, maxsize: int = 4096):
        self.maxsize = maxsize
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> torch.Tensor | None:
        with self._lock:
            vec = self._items.get(key)
            if vec is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return vec

    def put(self, key: tuple, vec: torch.Tensor) -> None:
        if self.maxsize <= 0:
            return
        with self._lock:
            self._items[key] = vec
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> dict:
        return {"entries": len(self), "maxsize": self.maxsize, "hits": self.hits, "misses": self.misses}


class ZeroShotClassifier:
    """Classify images against a :class:`PromptSet` with a PathCLIP model.

    ``cache``: a :class:`ClassEmbeddingCache` for this model, to reuse class embeddings across
    classifiers. Embedding checks :func:`pathvlm.cancel.check_cancelled` between batches.
    """

    def __init__(self, model, tokenizer, prompt_set: PromptSet, ensemble: bool = True, device="cpu",
                 cache: ClassEmbeddingCache | None = None):
        self.model, self.tokenizer, self.prompt_set, self.device = model, tokenizer, prompt_set, device
        self.class_names = list(prompt_set.classes)
        self.weights = self._class_weights(ensemble, cache)  # [C, D]

    @torch.inference_mode()
    def _class_weights(self, ensemble: bool, cache: ClassEmbeddingCache | None = None) -> torch.Tensor:
        rows = []
        for prompts in self.prompt_set.prompts(ensemble).values():
            key = tuple(prompts)
            vec = cache.get(key) if cache is not None else None
            if vec is None:
                emb = embed_texts(self.model, self.tokenizer, prompts, device=self.device)
                vec = torch.nn.functional.normalize(emb.mean(0), dim=-1)
                if cache is not None:
                    cache.put(key, vec)
            rows.append(vec)
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
