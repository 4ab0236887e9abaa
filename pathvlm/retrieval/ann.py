"""faiss indexes over L2-normalised vectors (inner product = cosine).

Small galleries get an exact ``IndexFlatIP``. Above ``ann_threshold`` vectors, an ``IndexIVFFlat``
whose ``nprobe`` is calibrated at build time: doubled until recall@10 against exact search, on
held-out perturbed gallery vectors, reaches ``target_recall``. The measured recall is recorded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pathvlm.imports import require_package

DEFAULT_ANN_THRESHOLD = 50_000


@dataclass
class AnnInfo:
    kind: str  # "flat" or "ivf"
    nlist: int = 0
    nprobe: int = 0
    calibrated_recall_at_10: float | None = None


def _faiss():
    return require_package("faiss", extra="retrieval", pip_name="faiss-cpu")


def build_faiss(vectors: np.ndarray, ann_threshold: int = DEFAULT_ANN_THRESHOLD, target_recall: float = 0.95,
                seed: int = 0, nlist: int | None = None):
    """Return (faiss index, AnnInfo) for normalised float32 vectors [N, D]."""
    faiss = _faiss()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if n < ann_threshold:
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return index, AnnInfo("flat")
    # about 4 sqrt(N) lists, but at least 39 training points per list (faiss's k-means minimum)
    nlist = nlist or max(1, min(65536, int(4 * math.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train = x[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
    index.cp.seed = seed
    index.train(train)
    index.add(x)
    nprobe, recall = calibrate_nprobe(index, x, target_recall, rng)
    index.nprobe = nprobe
    return index, AnnInfo("ivf", nlist=nlist, nprobe=nprobe, calibrated_recall_at_10=recall)


def perturbed_queries(x: np.ndarray, count: int, rng, noise: float = 0.5) -> np.ndarray:
    """Queries near, but not on, gallery vectors: a gallery vector plus isotropic noise, renormalised."""
    q = x[rng.choice(len(x), size=min(count, len(x)), replace=False)].copy()
    q += rng.normal(scale=noise / math.sqrt(x.shape[1]), size=q.shape).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    hits = sum(len(set(f[:k]) & set(t[:k])) for f, t in zip(found, truth))
    return hits / (len(truth) * k)


def calibrate_nprobe(index, x: np.ndarray, target: float, rng, queries: int = 200, k: int = 10):
    faiss = _faiss()
    q = perturbed_queries(x, queries, rng)
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    _, truth = exact.search(q, k)
    nprobe, recall = 1, 0.0
    while True:
        index.nprobe = nprobe
        _, found = index.search(q, k)
        recall = recall_at_k(found, truth, k)
        if recall >= target or nprobe >= index.nlist:
            return nprobe, recall
        nprobe = min(index.nlist, nprobe * 2)
