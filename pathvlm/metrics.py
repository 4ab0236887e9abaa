"""Metrics shared by training-time evaluation and the evaluation harness."""
from __future__ import annotations

import numpy as np


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else float("nan")


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    recalls = [float((y_pred[y_true == c] == c).mean()) for c in np.unique(y_true)]
    return float(np.mean(recalls)) if recalls else float("nan")


def weighted_f1(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    total, score = len(y_true), 0.0
    for c in np.unique(y_true):
        tp = float(((y_pred == c) & (y_true == c)).sum())
        fp = float(((y_pred == c) & (y_true != c)).sum())
        fn = float(((y_pred != c) & (y_true == c)).sum())
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        score += f1 * (y_true == c).sum() / total
    return float(score)


def recall_at_k(similarity: np.ndarray, k: int) -> float:
    """Row i's correct column is i (paired retrieval): share of rows whose match ranks in the top k."""
    sim = np.asarray(similarity)
    target = sim[np.arange(len(sim)), np.arange(len(sim))][:, None]
    rank = (sim > target).sum(1)  # ties resolved in favour of the match
    return float((rank < k).mean())


def class_precision_at_k(similarity: np.ndarray, query_labels, gallery_labels, k: int) -> float:
    """Share of the top-k gallery items that have the query's class, averaged over queries."""
    sim = np.asarray(similarity)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    g = np.asarray(gallery_labels)
    q = np.asarray(query_labels)
    return float((g[top] == q[:, None]).mean())
