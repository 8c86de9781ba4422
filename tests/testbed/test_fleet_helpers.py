"""The fleet benchmarks' histogram reading: summed over series, a quantile of what happened between two readings."""

from __future__ import annotations

import math

from mfl_testbed.fleet import histogram, monitoring_loop, quantile

TEXT = """# TYPE lag histogram
lag_bucket{shard="a",le="0.1"} {a1}
lag_bucket{shard="a",le="1.0"} {a2}
lag_bucket{shard="a",le="+Inf"} {a2}
lag_bucket{shard="b",le="0.1"} 0
lag_bucket{shard="b",le="1.0"} {b2}
lag_bucket{shard="b",le="+Inf"} {b2}
lag_count 0
"""


def reading(a1: int, a2: int, b2: int) -> dict[float, float]:
    return histogram(TEXT.replace("{a1}", str(a1)).replace("{a2}", str(a2)).replace("{b2}", str(b2)), "lag")


def test_quantiles_of_what_happened_between_two_readings() -> None:
    before, after = reading(10, 10, 0), reading(100, 100, 10)  # since: 90 under 0.1 s, 10 between 0.1 and 1 s
    assert after == {0.1: 100.0, 1.0: 110.0, math.inf: 110.0}
    assert math.isclose(quantile(before, after, 0.5), 0.1 * 50 / 90)
    assert math.isclose(quantile(before, after, 0.95), 0.1 + 0.9 * 0.5)
    assert math.isnan(quantile(after, after, 0.99))


def test_a_monitoring_loop_retrains_only_when_asked() -> None:
    loop = monitoring_loop("m1", "bench", "http://p:9090", 10, "q", "claim")
    assert "retraining" not in loop["spec"] and loop["spec"]["monitoring"]["interval"] == "10s"
    assert monitoring_loop("m1", "bench", "http://p", 5, "q", "c", "2m", {"target": "y"})["spec"]["retraining"]
