"""Text metrics for VQA and report generation, implemented from their definitions (and tested
against hand-computed values): exact match, token F1 and recall, BLEU-4, ROUGE-L, chrF."""
from __future__ import annotations

import math
from collections import Counter

from pathvlm.evals.answers import normalise_answer


def tokens(text: str) -> list[str]:
    return normalise_answer(text).split()


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise_answer(prediction) == normalise_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    p, r = tokens(prediction), tokens(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def token_recall(prediction: str, reference: str) -> float:
    """Share of reference tokens found in the prediction (PathVQA's open-ended 'recall')."""
    p, r = tokens(prediction), tokens(reference)
    if not r:
        return float(not p)
    return sum((Counter(p) & Counter(r)).values()) / len(r)


def _ngrams(seq, n):
    return Counter(tuple(seq[i:i + n]) for i in range(len(seq) - n + 1))


def bleu(predictions: list[str], references: list[str], max_n: int = 4, smooth: bool = True) -> float:
    """Corpus BLEU (Papineni et al. 2002) with one reference per prediction; add-one smoothing of
    the higher-order precisions when ``smooth`` (Lin & Och 2004), so short texts do not score 0."""
    matches, totals = [0] * max_n, [0] * max_n
    pred_len = ref_len = 0
    for pred, ref in zip(predictions, references):
        p, r = tokens(pred), tokens(ref)
        pred_len += len(p)
        ref_len += len(r)
        for n in range(1, max_n + 1):
            pc, rc = _ngrams(p, n), _ngrams(r, n)
            matches[n - 1] += sum((pc & rc).values())
            totals[n - 1] += max(0, len(p) - n + 1)
    if pred_len == 0:
        return 0.0
    logs = []
    for n in range(max_n):
        m, t = matches[n], totals[n]
        if smooth and n > 0:
            m, t = m + 1, t + 1
        if m == 0 or t == 0:
            return 0.0
        logs.append(math.log(m / t))
    bp = 1.0 if pred_len > ref_len else math.exp(1 - ref_len / pred_len)
    return bp * math.exp(sum(logs) / max_n)


def _lcs(a, b) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str, beta: float = 1.2) -> float:
    """ROUGE-L F-measure (Lin 2004) on tokens."""
    p, r = tokens(prediction), tokens(reference)
    if not p or not r:
        return 0.0
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return (1 + beta ** 2) * prec * rec / (rec + beta ** 2 * prec)


def chrf(prediction: str, reference: str, n: int = 6, beta: float = 2.0) -> float:
    """chrF (Popović 2015): character n-gram F-score, n = 1..6, spaces removed, beta = 2."""
    p, r = "".join(prediction.split()), "".join(reference.split())
    precs, recs = [], []
    for k in range(1, n + 1):
        pc, rc = _ngrams(p, k), _ngrams(r, k)
        if not pc or not rc:
            continue
        common = sum((pc & rc).values())
        precs.append(common / sum(pc.values()))
        recs.append(common / sum(rc.values()))
    if not precs:
        return 0.0
    P, R = sum(precs) / len(precs), sum(recs) / len(recs)
    if P + R == 0:
        return 0.0
    return (1 + beta ** 2) * P * R / (beta ** 2 * P + R)
