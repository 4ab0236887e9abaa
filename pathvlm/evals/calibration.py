"""Calibration: expected calibration error, reliability-diagram bins, selective accuracy."""
from __future__ import annotations

import numpy as np


def reliability_bins(confidence, correct, n_bins: int = 10) -> list[dict]:
    conf, corr = np.asarray(confidence, float), np.asarray(correct, float)
    edges = np.linspace(0, 1, n_bins + 1)
    out = []
    for i in range(n_bins):
        lo, hi = edges[i], edges[i + 1]
        mask = (conf > lo) & (conf <= hi) if i else (conf >= lo) & (conf <= hi)
        out.append({"lo": float(lo), "hi": float(hi), "count": int(mask.sum()),
                    "confidence": float(conf[mask].mean()) if mask.any() else None,
                    "accuracy": float(corr[mask].mean()) if mask.any() else None})
    return out


def expected_calibration_error(confidence, correct, n_bins: int = 10) -> float:
    """ECE with equal-width bins: sum over bins of |accuracy - confidence| weighted by bin share."""
    n = len(confidence)
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"])
                     for b in reliability_bins(confidence, correct, n_bins) if b["count"]))


def selective_accuracy(confidence, correct, coverage: float) -> float:
    """Accuracy on the ``coverage`` share of samples the model is most confident about (abstaining
    on the rest); ties broken by order."""
    conf, corr = np.asarray(confidence, float), np.asarray(correct, float)
    k = max(1, int(round(coverage * len(conf))))
    keep = np.argsort(-conf, kind="stable")[:k]
    return float(corr[keep].mean())
