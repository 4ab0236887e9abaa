"""Source adapters: each reads one public dataset's real published layout from a local folder.

An adapter is a function ``read(root, **options) -> Iterator[Record | Malformed]`` registered
with :func:`adapter`. It never raises for a bad row: it yields :class:`Malformed` with a reason,
which the recipe counts, reports and skips.
"""
from __future__ import annotations

from pathvlm.data.sources.registry import ADAPTERS, AdapterInfo, Malformed, Record, adapter

__all__ = ["ADAPTERS", "AdapterInfo", "Malformed", "Record", "adapter", "get_adapter", "list_adapters"]


def list_adapters() -> dict[str, AdapterInfo]:
    """All adapters, registered by importing their modules."""
    from pathvlm.data.sources import captions, classification, fields, vqa  # noqa: F401

    return ADAPTERS


def get_adapter(name: str) -> AdapterInfo:
    from pathvlm.errors import PathVLMError

    if name not in list_adapters():
        raise PathVLMError(f"unknown source adapter '{name}': choose one of {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name]
