"""log Phi(x) without scipy (core.analysis.normal): against scipy.special.log_ndtr and a 60-digit reference.

scipy stays in the test venv (scikit-learn, the trainer's, needs it; requirements/test.txt lists it), never in
the operator image.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import numpy as np
import pytest
from scipy.special import log_ndtr as scipy_log_ndtr

from feedbackloop.core.analysis.normal import log_ndtr, log_ndtr_array

# Below this, -Phi(-x) (x > ~37) is subnormal: both sides keep only a few bits, compared absolutely.
SUBNORMAL = 1e-300
RELATIVE = 1e-12


def dense_grid() -> np.ndarray:
    return np.unique(
        np.concatenate(
            [
                np.linspace(-40, 40, 80_001),  # steps of 0.001, across every regime's boundary
                -np.logspace(-12, 5, 20_001),
                np.logspace(-12, math.log10(40), 20_001),
                np.nextafter(-20.0, [-np.inf, np.inf]),  # the asymptotic series' boundary
                np.nextafter(0.0, [-np.inf, np.inf]),
                [-1e5, -20.0, -1.0, 0.0, 5.0, 37.0, 38.5, 40.0],
            ]
        )
    )


def compare(x: np.ndarray, ours: np.ndarray, reference: np.ndarray) -> None:
    tiny = np.abs(reference) < SUBNORMAL
    relative = np.abs(ours - reference) / np.where(tiny, 1.0, np.abs(reference))
    assert not np.any(relative[~tiny] > RELATIVE), (x[~tiny][np.argmax(relative[~tiny])], relative.max())
    assert np.all(np.abs(ours - reference)[tiny] <= SUBNORMAL)


def test_matches_scipy_on_a_dense_grid_from_minus_1e5_to_40() -> None:
    x = dense_grid()
    ours, reference = log_ndtr_array(x), scipy_log_ndtr(x)
    assert np.all(np.isfinite(ours[x < 38])) and np.all(ours <= 0)
    compare(x, ours, reference)


def test_matches_scipy_far_into_the_left_tail() -> None:
    """Finite wherever scipy's is: down to x ~ -1.9e154, where x^2/2 overflows for both."""
    x = -np.logspace(5, math.log10(1.8e154), 2_001)
    ours, reference = log_ndtr_array(x), scipy_log_ndtr(x)
    assert np.all(np.isfinite(reference)) and np.all(np.isfinite(ours))
    compare(x, ours, reference)


def test_monotone_across_the_regimes() -> None:
    x = np.linspace(-60, 8, 68_001)
    assert np.all(np.diff(log_ndtr_array(x)) > 0)


def exact_log_ndtr(x: float) -> Decimal:
    """log Phi(x) to ~50 digits: erf's Taylor series for |x| <= 6, the Mills ratio's continued fraction beyond."""
    with localcontext() as context:
        context.prec = 60
        value, pi = Decimal(x), Decimal("3.14159265358979323846264338327950288419716939937510582097494459")
        half_log_2pi = (2 * pi).ln() / 2
        if abs(x) <= 6:
            term = total = value
            n = 0
            while abs(term) > Decimal(10) ** -70:
                n += 1
                term = term * value * value / (2 * n + 1)
                total += term
            return (Decimal(1) / 2 + (-value * value / 2 - half_log_2pi).exp() * total).ln()
        a, fraction = abs(value), abs(value)
        for k in range(600, 0, -1):  # Q(a) = phi(a) / (a + 1/(a + 2/(a + 3/(a + ...))))
            fraction = a + k / fraction
        log_q = -a * a / 2 - half_log_2pi - fraction.ln()
        if x < 0:
            return log_q
        q = log_q.exp()
        return -sum((q**k / k for k in range(1, 8)), Decimal(0))  # log(1 - q), q < 1e-9


@pytest.mark.parametrize(
    ("low", "high", "tolerance"),
    [
        (-1e5, -20, 1e-15),  # asymptotic series
        (-20, 0, 1e-15),  # log(erfc / 2)
        # log1p(-erfc / 2) = -Phi(-x): the rounding of x / sqrt 2 shows, ~t^2 ulp (scipy's is the same)
        (0, 36, 1e-12),
    ],
)
def test_against_a_60_digit_reference(low: float, high: float, tolerance: float) -> None:
    x = np.linspace(low, high, 301) if low > -100 else -np.logspace(math.log10(-high), math.log10(-low), 301)
    worst = 0.0
    for value in x.tolist():
        exact = exact_log_ndtr(value)
        worst = max(worst, float(abs((Decimal(log_ndtr(value)) - exact) / exact)))
    assert worst < tolerance


def test_special_values() -> None:
    assert log_ndtr(math.inf) == 0.0 and log_ndtr(-math.inf) == -math.inf and math.isnan(log_ndtr(math.nan))
    assert log_ndtr(0.0) == pytest.approx(-math.log(2), rel=1e-16) and log_ndtr(-0.0) == log_ndtr(0.0)
    assert log_ndtr(40.0) == 0.0 and log_ndtr(-1e300) == -math.inf  # as scipy's
    assert log_ndtr(-1e5) == pytest.approx(-5e9 - math.log(1e5) - 0.5 * math.log(2 * math.pi), rel=1e-15)


@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
def test_the_array_form_keeps_the_shape(shape: tuple[int, ...]) -> None:
    x = np.linspace(-30, 5, math.prod(shape)).reshape(shape)
    out = log_ndtr_array(x)
    assert out.shape == shape and out.dtype == float
    assert np.array_equal(out.ravel(), [log_ndtr(v) for v in x.ravel().tolist()])
    assert log_ndtr_array(1.5).shape == ()
