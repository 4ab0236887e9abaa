"""Where a build keeps its rows between reading and writing, so memory does not grow with the row count.

``RowSpill``: every curated row, pickled one by one into a temporary file that the build itself writes and reads
back by offset (a file of the build's own, never a user's file), removed when the build ends.
``RowColumns``: what the whole-dataset stages need of each row (ids, image digest and dHash, duplicate key,
group, task, label, source split), in numpy arrays of a few dozen bytes per row. Deduplication, group merging,
splits and the leakage audit run on the columns; the builders and writers read the rows back from the spill in
order, one at a time.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from array import array
from pathlib import Path

import numpy as np

from pathvlm.data import dedup

NO_DHASH = np.uint64(0)


class RowSpill:
    """Rows appended to one file and read back by index."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f = open(self.path, "w+b")
        self._offsets = array("q", [0])

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def append(self, row: dict) -> int:
        data = pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL)
        self._f.write(data)
        self._offsets.append(self._offsets[-1] + len(data))
        return len(self._offsets) - 2

    def finish_writing(self) -> None:
        self._f.flush()

    def read(self, i: int) -> dict:
        start, end = self._offsets[i], self._offsets[i + 1]
        return pickle.loads(os.pread(self._f.fileno(), end - start, start))

    def close(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


class Codes:
    """Small vocabularies (task, label, source split) as integer codes."""

    def __init__(self):
        self.index: dict = {}
        self.names: list = []

    def code(self, value) -> int:
        if value not in self.index:
            self.index[value] = len(self.names)
            self.names.append(value)
        return self.index[value]


def duplicate_key(row: dict) -> bytes:
    """The exact-duplicate key (same image bytes and the same normalised text, question, answer, label and task)
    as a 16-byte digest."""
    key = (row["image_sha256"], dedup.normalise_text(row["text"]), row["question"], row["answer"], row["label"],
           row["task"])
    return hashlib.blake2b(repr(key).encode(), digest_size=16).digest()


class RowColumns:
    """The per-row fields the whole-dataset stages need, appended chunk by chunk, then frozen into arrays."""

    def __init__(self):
        self.tasks, self.labels, self.source_splits = Codes(), Codes(), Codes()
        self._parts: list[dict] = []

    def add_chunk(self, rows: list[dict], source_index: dict[str, int]) -> None:
        if not rows:
            return
        self._parts.append({
            "sort_id": np.array([int(r["id"], 16) for r in rows], np.uint64),
            "source": np.array([source_index[r["source"]] for r in rows], np.int32),
            "task": np.array([self.tasks.code(r["task"]) for r in rows], np.int32),
            "label": np.array([self.labels.code(r["label"]) for r in rows], np.int32),
            "source_split": np.array([self.source_splits.code(r["source_split"]) for r in rows], np.int32),
            "sha": np.array([bytes.fromhex(r["image_sha256"]) if r["image_sha256"] else b"" for r in rows], "S32"),
            "has_image": np.array([bool(r["image_sha256"]) for r in rows], bool),
            "dhash": np.array([NO_DHASH if r["dhash"] is None else r["dhash"] for r in rows], np.uint64),
            "dup_key": np.array([duplicate_key(r) for r in rows], "S16"),
            "has_text": np.array([bool(r["text"]) for r in rows], bool),
            "group": np.array([r["group"].encode() for r in rows]),
        })

    @staticmethod
    def empty() -> dict[str, np.ndarray]:
        return {"sort_id": np.zeros(0, np.uint64), "source": np.zeros(0, np.int32), "task": np.zeros(0, np.int32),
                "label": np.zeros(0, np.int32), "source_split": np.zeros(0, np.int32), "sha": np.zeros(0, "S32"),
                "has_image": np.zeros(0, bool), "dhash": np.zeros(0, np.uint64), "dup_key": np.zeros(0, "S16"),
                "has_text": np.zeros(0, bool), "group": np.zeros(0, "S1")}

    def freeze(self) -> dict[str, np.ndarray]:
        """The columns as arrays (the empty columns when no row came). The 32-byte image digests become ``img``,
        each row's image as an integer in sha256 order (-1: none), so no stage sorts the digests again."""
        if not self._parts:
            cols = self.empty()
        else:  # one column at a time, its chunks dropped as it is joined: never the chunks and the columns at once
            cols = {k: np.concatenate([p.pop(k) for p in self._parts]) for k in list(self._parts[0])}
        self._parts = []
        _, img = np.unique(cols.pop("sha"), return_inverse=True)
        cols["img"] = np.where(cols["has_image"], img.reshape(-1), -1).astype(np.int64)
        return cols
