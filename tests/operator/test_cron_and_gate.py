from datetime import UTC, datetime

import pytest

from feedbackloop.core import api, cron
from feedbackloop.core.gate import offline_gate


def ts(text):
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    "expr, when, expected",
    [
        ("0 3 * * *", "2026-11-28T03:00", True),
        ("0 3 * * *", "2026-11-28T03:01", False),
        ("*/15 * * * *", "2026-11-28T10:45", True),
        ("0 0 * * 1-5", "2026-11-28T00:00", False),  # a Saturday
        ("0 0 * * 6", "2026-11-28T00:00", True),
        ("0 0 1 * 6", "2026-11-28T00:00", True),  # either day field when both are restricted
    ],
)
def test_matches(expr, when, expected):
    assert cron.matches(expr, ts(when)) is expected


def test_last_slot_finds_the_latest_minute():
    assert cron.last_slot("0 * * * *", ts("2026-11-28T09:30"), ts("2026-11-28T11:20")) == ts("2026-11-28T11:00")
    assert cron.last_slot("0 * * * *", ts("2026-11-28T11:00"), ts("2026-11-28T11:20")) is None


@pytest.mark.parametrize("expr", ["* * *", "61 * * * *", "*/0 * * * *"])
def test_parse_refuses(expr):
    with pytest.raises(ValueError):
        cron.parse(expr)


def spec(**gate):
    task = "regression" if gate.get("metric") in ("mae", "rmse", "r2") else "classification"
    return api.validate_spec(
        {
            "model": {"name": "m", "task": task, "storage": {"hostPath": {"path": "/d"}}},
            "monitoring": {"prometheus": {"url": "http://p"}},
            "retraining": {"features": ["a"], "target": "y", "gate": gate},
        }
    )


def test_gate_passes_a_better_challenger():
    result = offline_gate(spec(), {"challenger": {"accuracy": 0.9}, "champion": {"accuracy": 0.85}}, False)
    assert result.passed and "vs champion" in result.message


def test_gate_rejects_a_worse_challenger_and_respects_tolerance():
    summary = {"challenger": {"accuracy": 0.84}, "champion": {"accuracy": 0.85}}
    assert not offline_gate(spec(), summary, False).passed
    assert offline_gate(spec(maxDegradation=0.02), summary, False).passed


def test_gate_lower_is_better_metrics():
    summary = {"challenger": {"mae": 1.0}, "champion": {"mae": 1.2}}
    assert offline_gate(spec(metric="mae"), summary, False).passed


def test_gate_needs_a_champion_unless_first():
    summary = {"challenger": {"accuracy": 0.9}}
    assert not offline_gate(spec(), summary, False).passed
    assert offline_gate(spec(), summary, True).passed
    assert not offline_gate(spec(minScore=0.95), summary, True).passed


# --- the gate's sign test against scipy (the operator's image has none: gate.sign_test_p's docstring) ---------


def test_sign_test_agrees_with_scipy_binomtest_over_a_grid():
    binomtest = pytest.importorskip("scipy.stats").binomtest
    from feedbackloop.core.gate import sign_test_p

    for n in range(1, 121):
        for wins in range(n + 1):
            expected = binomtest(wins, n, 0.5, alternative="greater").pvalue
            assert sign_test_p(wins, n - wins) == pytest.approx(expected, rel=1e-9, abs=1e-300), (wins, n)
    for wins, losses in ((212, 31), (700, 650), (1500, 1400), (3, 2000)):  # the sizes of real holdouts
        expected = binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue
        assert sign_test_p(wins, losses) == pytest.approx(expected, rel=1e-9, abs=1e-300)
