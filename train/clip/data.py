"""Training and evaluation data for PathCLIP: the ``clip`` parquet shards a data recipe builds."""
from __future__ import annotations

import hashlib

import torch
from torch.utils.data import Dataset

from pathvlm.images import load_image


def read_rows(data_dir: str, split: str, exclude_sources=(), only_sources=None) -> list[dict]:
    """Rows of ``clip/<split>`` as dicts with raw image bytes (decoded lazily)."""
    import pyarrow.parquet as pq
    from pathlib import Path

    from pathvlm.errors import PathVLMError

    files = sorted((Path(data_dir) / "clip").glob(f"{split}-*.parquet"))
    if not files:
        raise PathVLMError(f"{data_dir}/clip has no '{split}' shards: build the data first "
                           "(pathvlm data build data_recipes/nano.yaml)")
    rows = []
    for f in files:
        for r in pq.read_table(f).to_pylist():
            if r["source"] in exclude_sources or (only_sources and r["source"] not in only_sources):
                continue
            rows.append({"id": r["id"], "image": r["image"]["bytes"], "text": r["text"], "label": r["label"],
                         "group": r["group"], "source": r["source"]})
    return rows


def oversample_rows(rows: list[dict], factors: dict) -> list[dict]:
    """Repeat the rows of each label in ``factors`` that many times (a rare class seen more often per epoch).
    A label no row carries is an error: a typo would otherwise train silently without the intended balance."""
    from pathvlm.errors import PathVLMError

    labels = {r["label"] for r in rows}
    missing = sorted(set(factors) - labels)
    if missing:
        raise PathVLMError(f"oversample names label(s) the training rows do not have: {', '.join(missing)} "
                           f"(labels: {', '.join(sorted(labels))})")
    return [r for r in rows for _ in range(factors.get(r["label"], 1))]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}:{index}".encode()).digest()[:8], "little") % (2**63)


class ClipPairs(Dataset):
    """(pixels, caption index). Augmentation randomness is a function of (seed, epoch, index), so a
    resumed run sees exactly the views the uninterrupted run would have seen, with any worker count."""

    def __init__(self, rows: list[dict], transform, seed: int):
        self.rows, self.transform, self.seed, self.epoch = rows, transform, seed, 0
        self.captions = sorted({r["text"] for r in rows})
        self.caption_index = {c: i for i, c in enumerate(self.captions)}
        self.label_names = sorted({r.get("label") or "" for r in rows} - {""})
        index = {name: k for k, name in enumerate(self.label_names)}
        self.label_ids = [index.get(r.get("label") or "", -1) for r in rows]  # -1: no label (a caption-only row)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        r = self.rows[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, i))
            pixels = self.transform(load_image(r["image"]))
        return pixels, self.caption_index[r["text"]]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """A seeded permutation cut into full batches (the last partial batch is dropped: contrastive
    losses compare within a batch, and a tiny last batch would be a noisy step)."""
    g = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    perm = torch.randperm(n, generator=g).tolist()
    return [perm[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
