"""Paired significance tests, from the standard implementations (scipy).

``mcnemar_exact``: two classifiers (or two stages, or fp32 and int8) scored on the same items; the exact
two-sided McNemar test is a binomial test of the discordant items (gained vs lost) at p = 0.5, as
``statsmodels.stats.contingency_tables.mcnemar(table, exact=True)`` computes it. scipy's ``binomtest`` gives the
p-value (checked equal to statsmodels and to pathvlm's earlier closed-form sum in tests/test_standard_metrics.py).
"""
from __future__ import annotations


def mcnemar_exact(before, after) -> dict:
    """``before``/``after``: 0/1 correctness per item, same items in the same order. Returns the item count,
    ``gained`` (wrong before, right after), ``lost`` (right before, wrong after) and ``p_value``."""
    from scipy.stats import binomtest

    before, after = list(before), list(after)
    if len(before) != len(after):
        raise ValueError(f"a paired test needs the same items ({len(before)} vs {len(after)})")
    gained = sum(1 for a, b in zip(before, after) if not a and b)
    lost = sum(1 for a, b in zip(before, after) if a and not b)
    n = gained + lost
    p = float(binomtest(min(gained, lost), n, 0.5, alternative="two-sided").pvalue) if n else 1.0
    return {"n": len(before), "gained": gained, "lost": lost, "p_value": min(1.0, p)}
