"""Linear probe and few-shot classification on frozen embeddings (deterministic, CPU-friendly)."""
from __future__ import annotations

import numpy as np
import torch


def fit_linear_probe(x: np.ndarray, y: list, l2: float = 1e-3, epochs: int = 300, lr: float = 0.1, seed: int = 0):
    """Multinomial logistic regression by full-batch L-BFGS; returns a predict function."""
    classes = sorted(set(y))
    idx = {c: i for i, c in enumerate(classes)}
    X = torch.tensor(np.asarray(x), dtype=torch.float64)
    Y = torch.tensor([idx[c] for c in y])
    g = torch.Generator().manual_seed(seed)
    W = (0.01 * torch.randn(X.shape[1], len(classes), generator=g, dtype=torch.float64)).requires_grad_()
    b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=lr, max_iter=epochs, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(X @ W + b, Y) + l2 * (W ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)

    def predict_proba(xq: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(torch.tensor(np.asarray(xq), dtype=torch.float64) @ W + b, -1).numpy()

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
