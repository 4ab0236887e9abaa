"""Recipe configuration: dataclasses filled from YAML (``data_recipes/*.yaml``)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from pathvlm.errors import PathVLMError


@dataclass
class SourceConfig:
    name: str  # a name for this source in the data card
    adapter: str  # see pathvlm.data.sources
    root: str | None = None
    licence: str | None = None  # overrides the adapter's default
    options: dict = field(default_factory=dict)  # keyword arguments for the adapter
    label_map: dict = field(default_factory=dict)  # dataset label -> knowledge-base class
    limit: int | None = None  # first N records only (quick runs)


@dataclass
class CurationConfig:
    clean_captions: bool = True
    visual_filter: str = "rule"  # none | rule | model (PathCLIP text tower, see model_source)
    model_source: str = "pathclip-nano"
    english_only: bool = True
    min_words: int = 3
    max_words: int = 400
    drop_exact_duplicates: bool = True  # same image bytes and same text/question
    drop_label_conflicts: bool = False  # drop labelled images whose identical bytes carry two labels (label noise)
    image_near_duplicate_bits: int = 4  # dHash Hamming distance; near-duplicates share one group
    drop_near_duplicate_images: bool = False
    text_near_duplicate_jaccard: float = 0.8  # captions this similar (word 3-shingles, MinHash LSH) are reported
    text_near_duplicates: bool = True  # search caption near-duplicates (off: image hashes only, for huge builds)
    max_image_side: int = 1024  # larger images are downscaled and stored as PNG
    max_pixels: int = 64_000_000


@dataclass
class SplitConfig:
    ratios: dict = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    seed: int = 0
    use_source_splits: bool = False  # keep the source's own split (e.g. PathVQA's) instead
    on_leak: str = "fail"  # fail | warn


@dataclass
class RecipeConfig:
    name: str
    sources: list[SourceConfig]
    description: str = ""
    seed: int = 0
    require_images: bool = True
    curation: CurationConfig = field(default_factory=CurationConfig)
    splits: SplitConfig = field(default_factory=SplitConfig)
    builders: list[str] = field(default_factory=lambda: ["clip", "align", "sft", "grpo"])
    knowledge: str | None = None  # path to a knowledge-base JSON (default: the shipped one)
    captions_per_image: int = 1
    webdataset: bool = False  # also write webdataset tar shards
    examples_in_card: int = 3


def _build(cls, data: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise PathVLMError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    return cls(**data)


VAR = re.compile(r"\$\{(\w+)\}")


def expand_vars(value: str, variables: dict) -> str:
    def sub(m):
        key = m.group(1)
        if key in variables:
            return str(variables[key])
        if key in os.environ:
            return os.environ[key]
        raise PathVLMError(f"recipe uses ${{{key}}} but it is not set (set it in the environment or with --set {key}=...)")

    return VAR.sub(sub, value)


def load_recipe(path: str | Path, variables: dict | None = None) -> RecipeConfig:
    """Read a YAML recipe; ``${SHARED}`` defaults to ../shared/data when present, ``${RECIPE_DIR}`` to its folder."""
    from pathvlm.paths import shared_data

    from pathvlm.yaml_io import read_yaml_mapping

    p = Path(path)
    data = read_yaml_mapping(p, "recipe")
    if "name" not in data or "sources" not in data:
        raise PathVLMError(f"{p}: a recipe needs at least 'name' and 'sources'")
    shared = shared_data()
    variables = {"RECIPE_DIR": str(p.parent.resolve()), **({"SHARED": str(shared)} if shared else {}), **(variables or {})}
    sources = []
    for i, s in enumerate(data.pop("sources")):
        s = dict(s)
        if s.get("root"):
            s["root"] = expand_vars(str(s["root"]), variables)
        sources.append(_build(SourceConfig, s, f"{p}: sources[{i}]"))
    curation = _build(CurationConfig, data.pop("curation", {}) or {}, f"{p}: curation")
    splits = _build(SplitConfig, data.pop("splits", {}) or {}, f"{p}: splits")
    if data.get("knowledge"):
        data["knowledge"] = expand_vars(str(data["knowledge"]), variables)
    recipe = _build(RecipeConfig, {**data, "sources": sources, "curation": curation, "splits": splits}, str(p))
    from pathvlm.data.builders import BUILDERS

    bad = [b for b in recipe.builders if b not in BUILDERS]
    if bad:
        raise PathVLMError(f"{p}: unknown builder(s) {bad}; choose from {list(BUILDERS)}")
    return recipe
