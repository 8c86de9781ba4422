"""log Phi(x), the log of the standard normal CDF, in pure Python: all the latency check needed of scipy.

A stand-in for scipy.special.log_ndtr that keeps scipy's 112 MB out of the operator image. Three regimes, as
scipy's own (tests/operator/test_analysis_normal.py checks them against scipy on a dense grid and against a
60-digit reference):

    x >= 0         log1p(-Phi(-x)), Phi(-x) = erfc(x / sqrt 2) / 2: no cancellation as Phi(x) -> 1. The
                   result is -Phi(-x), tiny, and carries the rounding of x / sqrt 2 (scipy's too): ~2e-13
                   relative at x ~ 37, subnormal beyond, -0.0 from x ~ 38.5
    -20 < x < 0    log(erfc(-x / sqrt 2) / 2): libm's erfc is good to an ulp or so, the log keeps that
    x <= -20       the asymptotic expansion -x^2/2 - log(-x) - log(2 pi)/2 + log(1 + sum_k (-1)^k (2k-1)!!/x^2k),
                   finite down to x ~ -1.9e154 (where x^2/2 overflows), far past erfc's underflow at x ~ -38.5

Relative error against the 60-digit reference: below 4e-16 for x < 0, below 2e-13 for x >= 0.
"""

from __future__ import annotations

import math

import numpy as np

_SQRT1_2 = math.sqrt(0.5)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_ASYMPTOTIC_BELOW = -20.0


def log_ndtr(x: float) -> float:
    """log of the standard normal CDF at x; -inf at -inf, 0.0 at +inf, nan at nan."""
    if x >= 0:
        return math.log1p(-0.5 * math.erfc(x * _SQRT1_2)) if x != math.inf else 0.0
    if x > _ASYMPTOTIC_BELOW:
        return math.log(0.5 * math.erfc(-x * _SQRT1_2))
    if math.isnan(x) or x == -math.inf:
        return x
    # 1 + sum_k (-1)^k (2k-1)!! / x^2k: |x| >= 20 makes each term at most (2k-1)/400 of the one before,
    # so 12 terms or fewer reach 1e-17 (the series diverges only beyond k ~ x^2/2).
    inverse_square = 1.0 / (x * x)
    term, series, k = 1.0, 0.0, 1
    while True:
        term *= -(2 * k - 1) * inverse_square
        series += term
        if abs(term) < 1e-17:
            break
        k += 1
    return -(0.5 * x) * x - math.log(-x) - _HALF_LOG_2PI + math.log1p(series)  # x^2/2 in one rounding


def log_ndtr_array(x: np.ndarray | float) -> np.ndarray:
    """log_ndtr element-wise (the bisection in latency.mixture_boundary_z works on arrays)."""
    values = np.asarray(x, dtype=float)
    return np.fromiter((log_ndtr(v) for v in values.ravel().tolist()), dtype=float, count=values.size).reshape(
        values.shape
    )
