"""The adapter registry and the records adapters yield. Adapter modules import from here (not from the
package, which imports them to register them)."""
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
