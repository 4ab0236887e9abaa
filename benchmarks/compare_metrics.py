"""The field's standard metric implementations against the in-house ones pathvlm used before, on the same inputs.

    python benchmarks/compare_metrics.py [--shared ../shared/data]

pathvlm now computes BLEU and chrF with sacrebleu, ROUGE-L with rouge-score, linear probes with scikit-learn's
LogisticRegression (UNI/CONCH settings), McNemar with scipy, perceptual hashes with imagehash and caption
near-duplicates with datasketch MinHash LSH. This script keeps the previous in-house versions (below, verbatim
from pathvlm 0.1) only to report how far the numbers move: real ARCH captions and LC25000 tiles from
../shared/data where present, seeded synthetic inputs otherwise. About a minute.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import math
import re
from collections import Counter

import numpy as np
import torch
from PIL import Image

from pathvlm.evals.answers import normalise_answer


def _tokens(text):
    return normalise_answer(text).split()


def _normalise_text(text):
    return re.sub(r"[^a-z0-9 ]+", "", re.sub(r"\s+", " ", (text or "").lower())).strip()


# ---------------------------------------------------------------- previous in-house implementations (pathvlm 0.1)
def _ngrams(seq, n):
    return Counter(tuple(seq[i:i + n]) for i in range(len(seq) - n + 1))


def old_bleu(predictions: list[str], references: list[str], max_n: int = 4, smooth: bool = True) -> float:
    """Corpus BLEU (Papineni et al. 2002) with one reference per prediction; add-one smoothing of
    the higher-order precisions when ``smooth`` (Lin & Och 2004), so short texts do not score 0."""
    matches, totals = [0] * max_n, [0] * max_n
    pred_len = ref_len = 0
    for pred, ref in zip(predictions, references):
        p, r = _tokens(pred), _tokens(ref)
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


def old_rouge_l(prediction: str, reference: str, beta: float = 1.2) -> float:
    """ROUGE-L F-measure (Lin 2004) on tokens."""
    p, r = _tokens(prediction), _tokens(reference)
    if not p or not r:
        return 0.0
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return (1 + beta ** 2) * prec * rec / (rec + beta ** 2 * prec)


def old_chrf(prediction: str, reference: str, n: int = 6, beta: float = 2.0) -> float:
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


def old_fit_linear_probe(x: np.ndarray, y: list, l2: float = 1e-3, epochs: int = 300, lr: float = 0.1, seed: int = 0):
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


def old_dhash(image: Image.Image, size: int = 8) -> int:
    """Difference hash: 64 bits of horizontal gradient signs on a 9x8 greyscale thumbnail.
    Robust to resizing, JPEG re-encoding and small colour changes."""
    g = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def old_simhash(text: str, bits: int = 64) -> int:
    """SimHash over word 3-shingles (and words for short texts)."""
    words = _normalise_text(text).split()
    feats = [" ".join(words[i:i + 3]) for i in range(max(1, len(words) - 2))] if len(words) >= 3 else words
    acc = np.zeros(bits, dtype=np.int64)
    shifts = np.arange(bits, dtype=np.uint64)
    for f in feats:
        h = np.uint64(int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "big"))
        acc += np.where((h >> shifts) & np.uint64(1), 1, -1)
    return int(sum(1 << i for i in range(bits) if acc[i] > 0))


# ---------------------------------------------------------------- comparisons
def arch_pairs(shared, n=400):
    """(prediction, reference) pairs of real captions on the same subject: consecutive distinct captions of one
    ARCH source (neighbouring figures of a textbook or of PubMed), and all captions."""
    import json

    data = json.loads((shared / "text" / "arch" / "captions_all.json").read_text())
    caps = list(dict.fromkeys(r["caption"].strip() for r in data.values() if r.get("caption")))
    return list(zip(caps[0:2 * n:2], caps[1:2 * n:2])), caps


def compare_text(pairs):
    from pathvlm.evals import text_metrics as tm

    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    rows = [("BLEU-4 (corpus)", old_bleu(preds, refs), tm.bleu(preds, refs)),
            ("chrF (mean of sentences)", np.mean([old_chrf(p, r) for p, r in pairs]),
             np.mean([tm.chrf(p, r) for p, r in pairs])),
            ("chrF (corpus, as the caption tasks now report it)", np.mean([old_chrf(p, r) for p, r in pairs]),
             tm.chrf_corpus(preds, refs)),
            ("ROUGE-L (mean F)", np.mean([old_rouge_l(p, r) for p, r in pairs]), np.mean([tm.rouge_l(p, r) for p, r in pairs]))]
    same = [(p, p) for p in preds[:50]]
    rows.append(("BLEU-4, identical texts", old_bleu([p for p, _ in same], [r for _, r in same]),
                 tm.bleu([p for p, _ in same], [r for _, r in same])))
    print(f"\n## Text metrics on {len(pairs)} pairs of neighbouring real ARCH captions\n")
    print("| metric | previous in-house | standard (sacrebleu / rouge-score) | difference |\n|---|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    rs = [(old_rouge_l(p, r), tm.rouge_l(p, r)) for p, r in pairs]
    print(f"\nper-pair ROUGE-L: max |difference| {max(abs(a - b) for a, b in rs):.4f} "
          "(beta 1.2 and pathvlm's answer normalisation before; rouge-score uses F1 and its own tokeniser)")


def compare_probe():
    from pathvlm.evals.probe import fit_linear_probe

    rng = np.random.default_rng(0)
    d, k = 256, 4
    centres = rng.normal(0, 1, (k, d)) / np.sqrt(d) * 0.6
    x = np.concatenate([rng.normal(0, 1, (150, d)) / np.sqrt(d) + c for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = [f"c{i}" for i in range(k) for _ in range(150)]
    idx = rng.permutation(len(y))
    tr, te = idx[:300], idx[300:]
    ytr, yte = [y[i] for i in tr], [y[i] for i in te]
    out = []
    for name, fit in (("previous (torch L-BFGS, l2 1e-3)", old_fit_linear_probe),
                      ("scikit-learn LogisticRegression (lambda 100/MC)", fit_linear_probe)):
        classes, predict = fit(x[tr], ytr)
        pred = [classes[j] for j in predict(x[te]).argmax(1)]
        out.append((name, np.mean([a == b for a, b in zip(pred, yte)]), pred))
    agree = np.mean([a == b for a, b in zip(out[0][2], out[1][2])])
    print(f"\n## Linear probe: {k} overlapping classes, {d}-dim unit embeddings, 300 train / 300 test\n")
    print("| probe | test accuracy |\n|---|---|")
    for name, acc, _ in out:
        print(f"| {name} | {acc:.3f} |")
    print(f"\nthe two probes predict the same class for {agree:.1%} of the test items")


def compare_mcnemar():
    from pathvlm.evals.stats import mcnemar_exact

    def old(b, c):
        n, k = b + c, min(b, c)
        return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0

    worst = 0.0
    cases = [(g, l) for g in range(0, 40, 3) for l in range(0, 40, 5)]
    for g, l in cases:
        before = [0] * g + [1] * l + [1] * 50
        after = [1] * g + [0] * l + [1] * 50
        worst = max(worst, abs(mcnemar_exact(before, after)["p_value"] - old(g, l)))
    sm = ""
    try:
        from statsmodels.stats.contingency_tables import mcnemar

        sm_worst = max(abs(mcnemar([[50, l], [g, 0]], exact=True).pvalue - old(g, l)) for g, l in cases)
        sm = f"; statsmodels mcnemar(exact=True) differs by at most {sm_worst:.1e}"
    except ImportError:
        sm = "; statsmodels not installed (not compared)"
    print(f"\n## McNemar exact test, {len(cases)} gained/lost tables\n\nscipy binomtest vs the previous closed-form "
          f"sum: max |p difference| {worst:.1e}{sm}")


def compare_dhash(shared):
    from pathvlm.data import dedup

    files = sorted((shared / "lc25000_colon").rglob("*.jpeg"))[:400] if shared else []
    rng = np.random.default_rng(0)
    images = [Image.open(f).convert("RGB") for f in files] or [
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(200)]
    diffs = [dedup.hamming(old_dhash(im), dedup.dhash(im)) for im in images]
    print(f"\n## Difference hash on {len(images)} {'LC25000 tiles' if files else 'synthetic images'}\n\n"
          f"imagehash.dhash equals the previous in-house dhash on {np.mean([d == 0 for d in diffs]):.1%} of images "
          f"(max Hamming difference {max(diffs)} bits)")


def compare_captions(captions, n=2500, threshold=0.8):
    from pathvlm.data import dedup

    caps = captions[:n]
    sets = [dedup.shingles(c) for c in caps]
    truth = set()
    for i, j in itertools.combinations(range(len(caps)), 2):
        a, b = sets[i], sets[j]
        if a and b and len(a & b) / len(a | b) >= threshold:
            truth.add((i, j))
    sim = [old_simhash(c) for c in caps]
    old_pairs = {(i, j) for i, j in itertools.combinations(range(len(caps)), 2)
                 if bin(sim[i] ^ sim[j]).count("1") <= 3}
    new = dedup.caption_near_duplicates(caps, threshold)
    clusters = dedup.duplicate_clusters(len(caps), new.edges)
    new_pairs = {(i, j) for i, j in itertools.combinations(range(len(caps)), 2) if clusters[i] == clusters[j]}

    def pr(found):
        tp = len(found & truth)
        return tp / max(1, len(found)), tp / max(1, len(truth))

    print(f"\n## Caption near-duplicates on {len(caps)} real ARCH captions (truth: exact Jaccard >= {threshold} on word "
          f"3-shingles, {len(truth)} pairs)\n")
    print("| method | pairs reported | precision | recall |\n|---|---|---|---|")
    p, r = pr(old_pairs)
    print(f"| previous: SimHash, Hamming <= 3 | {len(old_pairs)} | {p:.3f} | {r:.3f} |")
    p, r = pr(new_pairs)
    print(f"| datasketch MinHash LSH (128 perms) + exact check, clusters | {new.pair_count} | {p:.3f} | {r:.3f} |")


def main(argv=None) -> int:
    from pathlib import Path

    from pathvlm.paths import shared_data

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=None)
    args = ap.parse_args(argv)
    shared = Path(args.shared) if args.shared else shared_data()
    if shared is not None and (shared / "text" / "arch").exists():
        pairs, captions = arch_pairs(shared)
    else:
        base = ["Sheets of atypical cells with large hyperchromatic nuclei and frequent mitoses.",
                "Benign colonic mucosa with regular crypts lined by goblet cells."]
        pairs, captions = [(base[0], base[1]), (base[1], base[1])], base * 10
    compare_text(pairs)
    compare_probe()
    compare_mcnemar()
    compare_dhash(shared)
    compare_captions(captions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
