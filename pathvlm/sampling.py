"""Sampling settings shared by every generation path (the lean decoder, ``generate``, the server).

vLLM's rule for tiny temperatures: below :data:`SAMPLING_EPS` sampling is greedy; between it and
:data:`MIN_TEMPERATURE` the temperature is raised to :data:`MIN_TEMPERATURE` (dividing logits by
1e-38 overflows to inf, and softmax to nan). Seeds must fit torch's 64-bit generators, the range
vLLM's API accepts too.
"""
from __future__ import annotations

SAMPLING_EPS = 1e-5
MIN_TEMPERATURE = 1e-2
SEED_RANGE = (-(2**63), 2**63 - 1)


def effective_temperature(temperature: float) -> float:
    """The temperature sampling really uses: 0 (greedy) below 1e-5, at least 1e-2 otherwise."""
    t = float(temperature)
    if t < SAMPLING_EPS:
        return 0.0
    return max(t, MIN_TEMPERATURE)


def seed_in_range(seed) -> bool:
    return seed is None or (isinstance(seed, int) and not isinstance(seed, bool) and SEED_RANGE[0] <= seed <= SEED_RANGE[1])
