"""FleetPoller batching and error handling, against a fake query function (a unit test of one module;
the real Prometheus is exercised in tests/e2e)."""

import asyncio
import math
import re

from feedbackloop.core.api import MetricRule
from feedbackloop.runtime.poller import EndpointKey, FleetPoller, LoopQuery

ENDPOINT = EndpointKey("http://p", None, None, False, 5.0)
BATCHABLE = MetricRule.model_validate(
    {"name": "acc", "min": 0.5, "query": 'sum by (model, namespace) (x{model="{{model}}",namespace="{{namespace}}"})'}
)
AGGREGATED = MetricRule.model_validate({"name": "acc", "min": 0.5, "query": 'sum(x{model="{{model}}"})'})


def loops(n, rule=BATCHABLE):
    return [LoopQuery(f"ns/m{i}", ENDPOINT, {"model": f"m{i}", "namespace": "ns"}, [rule]) for i in range(n)]


class FakePrometheus:
    def __init__(self, values, fail=False):
        self.values, self.fail, self.queries = values, fail, []

    def __call__(self, endpoint, query):
        self.queries.append(query)
        if self.fail:
            raise ConnectionError("connection refused")
        regex = re.search(r'model=~"([^"]*)"', query)
        if regex:
            models = regex.group(1).split("|")
            if query.startswith("sum("):  # aggregated away: one series without labels, as Prometheus does
                return [({}, sum(self.values.get(m, 0) for m in models))]
            return [({"model": m, "namespace": "ns"}, self.values[m]) for m in models if m in self.values]
        exact = re.search(r'model="([^"]*)"', query).group(1)
        return [({}, self.values[exact])] if exact in self.values else []


def poll(fake, queries):
    return asyncio.run(FleetPoller(fake).poll(queries, now=100.0))


def test_one_query_serves_a_thousand_loops():
    fake = FakePrometheus({f"m{i}": i / 1000 for i in range(1000)})
    samples, stats = poll(fake, loops(1000))
    assert stats.queries == 1 and stats.batched_templates == 1
    assert samples["ns/m7"]["acc"].value == 0.007


def test_loop_without_series_gets_no_data():
    samples, _ = poll(FakePrometheus({"m0": 1.0}), loops(2))
    assert samples["ns/m1"]["acc"].value is None and not samples["ns/m1"]["acc"].error


def test_aggregated_template_falls_back_to_one_query_per_loop():
    fake = FakePrometheus({"m0": 0.1, "m1": 0.2})
    samples, stats = poll(fake, loops(2, AGGREGATED))
    assert samples["ns/m1"]["acc"].value == 0.2
    assert stats.unbatched_templates == 1 and stats.queries == 3  # the failed batch, then one each


def test_errors_become_no_data_with_the_reason():
    samples, stats = poll(FakePrometheus({}, fail=True), loops(3))
    sample = samples["ns/m2"]["acc"]
    assert sample.value is None and "connection refused" in sample.error
    assert stats.errors == 1


def test_nan_passes_through_as_nan():
    samples, _ = poll(FakePrometheus({"m0": math.nan}), loops(1))
    assert math.isnan(samples["ns/m0"]["acc"].value)


def test_samples_query_is_fetched_too():
    rule = MetricRule.model_validate(
        {
            "name": "acc",
            "min": 0.5,
            "query": BATCHABLE.query,
            "minSamples": 10,
            "samplesQuery": BATCHABLE.query.replace("x{", "n{"),
        }
    )
    samples, stats = poll(FakePrometheus({"m0": 0.9, "m1": 0.8}), loops(2, rule))
    assert samples["ns/m0"]["acc"].samples == 0.9 and stats.queries == 2
