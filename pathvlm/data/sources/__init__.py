"""Source adapters: each reads one public dataset's real published layout from a local folder.

An adapter is a function ``read(root, **options) -> Iterator[Record | Malformed]`` registered
with :func:`adapter`. It never raises for a bad row: it yields :class:`Malformed` with a reason,
which the recipe counts, reports and skips.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

ADAPTERS: dict[str, "AdapterInfo"] = {}


@dataclass
class Record:
    key: str  # unique within its source
    group: str  # slide, patient, figure or augmentation group: never split across train/val/test
    text: str = ""
    image_path: str | None = None
    image_bytes: bytes | None = None
    task: str = "caption"  # caption | classification | vqa_closed | vqa_open | mcq
    question: str = ""
    options: list[str] = field(default_factory=list)
    answer: str = ""
    label: str = ""
    rationale: str = ""
    source_split: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class Malformed:
    reason: str
    where: str


@dataclass
class AdapterInfo:
    name: str
    read: Callable[..., Iterator]
    licence: str
    description: str
    homepage: str


def adapter(name: str, licence: str, description: str, homepage: str = ""):
    def register(fn):
        ADAPTERS[name] = AdapterInfo(name, fn, licence, description, homepage)
        return fn

    return register


def list_adapters() -> dict[str, AdapterInfo]:
    """All adapters, registered by importing their modules."""
    from pathvlm.data.sources import captions, classification, fields, vqa  # noqa: F401

    return ADAPTERS


def get_adapter(name: str) -> AdapterInfo:
    from pathvlm.errors import PathVLMError

    if name not in list_adapters():
        raise PathVLMError(f"unknown source adapter '{name}': choose one of {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name]
