"""Linear probe and few-shot classification on frozen embeddings (deterministic, CPU-friendly).

The linear probe is scikit-learn's ``LogisticRegression`` set as UNI and CONCH report theirs: multinomial,
L-BFGS, at most 1,000 iterations, L2 penalty lambda = 100 / (M * C) for M embedding dimensions and C classes
(scikit-learn's ``C`` is 1 / lambda). ``benchmarks/compare_metrics.py`` compares it with the L-BFGS probe in
torch that pathvlm used before.
"""
from __future__ import annotations

import numpy as np


def fit_linear_probe(x: np.ndarray, y: list, seed: int = 0, max_iter: int = 1000):
    """Fit the probe on ``x`` [N, M] and labels ``y``; returns ``(classes, predict_proba)`` with the classes
    sorted and ``predict_proba(xq)`` giving [Nq, C] probabilities in that order."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, dtype=np.float64)
    classes = sorted(set(y))
    if len(classes) < 2:
        raise ValueError(f"a linear probe needs at least two classes, got {classes}")
    idx = {c: i for i, c in enumerate(classes)}
    lam = 100.0 / (x.shape[1] * len(classes))
    clf = LogisticRegression(C=1.0 / lam, solver="lbfgs", max_iter=max_iter, random_state=seed)
    clf.fit(x, np.array([idx[c] for c in y]))

    def predict_proba(xq: np.ndarray) -> np.ndarray:
        return clf.predict_proba(np.asarray(xq, dtype=np.float64))

    return classes, predict_proba


def few_shot_indices(y: list, k: int, seed: int) -> list[int]:
    """k examples per class, drawn with a seed (all of a class if it has fewer)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in sorted(set(y)):
        members = [i for i, v in enumerate(y) if v == c]
        out += sorted(rng.choice(members, size=min(k, len(members)), replace=False).tolist())
    return sorted(out)


def robustness_index(x: np.ndarray, biology: list, source: list, k: int = 10) -> float:
    """How embeddings cluster: among each sample's k nearest neighbours (cosine), the count that share
    its biology but not its source, over the count that share its source but not its biology (de Jong
    et al. 2025's robustness index). Above 1: organised by biology; below 1: by source or stain."""
    x = np.asarray(x, float)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    bio, src = np.asarray(biology), np.asarray(source)
    same_bio_other_src = ((bio[nn] == bio[:, None]) & (src[nn] != src[:, None])).sum()
    same_src_other_bio = ((src[nn] == src[:, None]) & (bio[nn] != bio[:, None])).sum()
    return float(same_bio_other_src / max(1, same_src_other_bio))
