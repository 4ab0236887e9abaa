"""Reading the files that adapters parse, turning every failure into a Malformed row."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from pathvlm.data.sources.registry import Malformed
from pathvlm.errors import PathVLMError


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise PathVLMError(f"{what} not found: {path}")
    return path


def read_json(path: Path):
    try:
        return json.loads(require(path, "file").read_text())
    except json.JSONDecodeError as e:
        raise PathVLMError(f"{path}: not valid JSON ({e})") from None


def iter_jsonl(path: Path) -> Iterator[dict | Malformed]:
    with open(require(path, "file"), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield Malformed("bad json line", f"{path.name}:{n} ({e.msg})")
                continue
            if not isinstance(row, dict):
                yield Malformed("bad json line", f"{path.name}:{n} (not an object)")
                continue
            row["_line"] = n
            yield row


def iter_csv(path: Path) -> Iterator[dict]:
    with open(require(path, "file"), newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f), 2):
            row["_line"] = n
            yield row


def iter_table(path: Path) -> Iterator[dict | Malformed]:
    """csv, tsv, jsonl or a JSON list of objects, by suffix."""
    if path.suffix == ".jsonl":
        yield from iter_jsonl(path)
    elif path.suffix == ".json":
        data = read_json(path)
        rows = data if isinstance(data, list) else list(data.values())
        for n, row in enumerate(rows):
            yield {**row, "_line": n} if isinstance(row, dict) else Malformed("bad json row", f"{path.name}[{n}]")
    elif path.suffix == ".tsv":
        with open(require(path, "file"), newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.DictReader(f, delimiter="\t"), 2):
                yield {**row, "_line": n}
    else:
        yield from iter_csv(path)
