"""Text metrics for VQA and report generation.

Exact match, token F1 and token recall (PathVQA's open-ended measures) are defined here on normalised answers.
BLEU-4, chrF and ROUGE-L come from the implementations published numbers use, so our figures compare with
theirs: ``sacrebleu`` (corpus BLEU with its 13a tokeniser and exponential smoothing; chrF with character
6-grams, beta 2) and Google's ``rouge-score`` (ROUGE-L F-measure with its default tokeniser, no stemming).
Scores are on a 0-1 scale (sacrebleu's 0-100 divided by 100). ``benchmarks/compare_metrics.py`` measures how
far these differ from the in-house versions pathvlm used before (docs/benchmarks.md).
"""
from __future__ import annotations

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


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 with one reference per prediction: ``sacrebleu.corpus_bleu`` (defaults), 0-1."""
    import sacrebleu

    if not predictions:
        return 0.0
    return sacrebleu.corpus_bleu(list(predictions), [list(references)]).score / 100.0


def chrf(prediction: str, reference: str) -> float:
    """Sentence chrF (Popović 2015; character 6-grams, beta 2): ``sacrebleu.sentence_chrf``, 0-1."""
    import sacrebleu

    return sacrebleu.sentence_chrf(prediction, [reference]).score / 100.0


def chrf_corpus(predictions: list[str], references: list[str]) -> float:
    """Corpus chrF (statistics summed over all pairs, as sacrebleu reports it): ``sacrebleu.corpus_chrf``, 0-1."""
    import sacrebleu

    if not predictions:
        return 0.0
    return sacrebleu.corpus_chrf(list(predictions), [list(references)]).score / 100.0


_ROUGE = None


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (Lin 2004) from Google's ``rouge-score`` (``RougeScorer(["rougeL"])``), 0-1."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(_ROUGE.score(reference, prediction)["rougeL"].fmeasure)
