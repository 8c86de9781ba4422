"""Every spec the CRD accepts either works or is reported InvalidSpec naming the field (issue 10, item 1).

Specs are drawn from the CRD's own openAPIV3Schema (crdgen.crd(): types, enums, patterns, bounds, required,
nullable), so whatever the API server would store is fair game, and run through what the operator does
with one: parse (validation.parse_spec), decide over a few worlds (a new loop, Monitoring with health, a
finished Job, a running canary with an observation), the canary analysis, and the objects it would create.

The strategies are a small walk over the schema rather than hypothesis-jsonschema: the CRD is OpenAPI v3.0
(`nullable`, boolean `exclusiveMinimum`, `x-kubernetes-preserve-unknown-fields`), which that library does
not read, and free-text fields (PromQL, features, cron) need hints to reach the code behind the parser
rather than die in it. Patterns go to `st.from_regex` (matched anywhere, as the API server does), bounds to
`st.integers`/`st.floats`. The budget is fixed and derandomized (300 examples, about 15 s on one core);
MFL_SPEC_EXAMPLES=5000 explores with a random seed.

The bounds of issue 22 are drawn too, with the admin's hostPath setting: PromQL that does not parse, hyperparameters
nested thousands deep or too large, hostPath forms of the node's own folders. Every accepted spec is checked
against them (assert_within_the_bounds), and three narrower properties draw each into an otherwise valid spec:
refused naming its field, accepted when within, never an exception.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import promql_parser
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from feedbackloop import crdgen
from feedbackloop.core import api, canary, phases, promql, resources, validation
from feedbackloop.core.api import DNS_SUBDOMAIN_PATTERN, ModelFeedbackLoopSpec
from feedbackloop.core.canary import ArmCounts, CanaryObservation
from feedbackloop.core.monitoring import Sample, rules_of
from feedbackloop.core.phases import JobObservation, ServingObservation, World, decide
from feedbackloop.core.settings import AdminSettings
from feedbackloop.core.timeutil import format_time

NOW = 1_800_000_000.0
SPEC_SCHEMA = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
MAX_ITEMS = 3  # lists are kept short: the checks are per item, and duplicates still occur
INT64 = (-(2**63), 2**63 - 1)

# --- strategies from the schema ---------------------------------------------------------------------------


def one_in(n: int, rare: st.SearchStrategy[Any], common: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.integers(1, n).flatmap(lambda pick: rare if pick == 1 else common)


TEMPLATES = one_in(
    6,
    # PromQL that does not parse, or gives no single value (issue 22): refused when the spec is parsed
    st.sampled_from(
        [
            'acc{model="{{model}}"',
            'acc{model="{{model}}}',
            "sum(rate(x[5m])",
            "rat(x[5m])",
            "x[5m]",
            "-(" * 400 + "x" + ")" * 400,  # deeper than the parser's stack allows in a small thread
        ]
    ),
    st.sampled_from(
        [
            'acc{model="{{model}}",namespace="{{namespace}}",version="{{version}}",track="{{track}}"}',
            "sum(rate(x[5m]))",
            "up{job={{ job }}}",  # an unknown placeholder
        ]
    ),
)
COLUMNS = st.sampled_from(["a", "b", "c", "y"])
# hostPath forms (issue 22): never the node's own folders, nor a way around that; only where the admin allows it.
NODE_PATHS = ["/", "/proc", "/proc/1/root", "/etc/kubernetes", "/var", "/var/lib/kubelet", "/var/run/docker.sock"]
NODE_PATHS += ["/data/../etc", "/data/./x", "//etc", "/data/", "/srv/mfl/team-a", "/tmp/mfl", "/..."]
NODE_FOLDERS = ("/proc", "/sys", "/dev", "/etc", "/run", "/var/run", "/var/lib/kubelet", "/root", "/boot", "/usr")


def nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def depth_of(value: Any) -> int:
    """Objects and lists nested in `value` (the value itself the first), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            stack.extend((item, depth + 1) for item in (node.values() if isinstance(node, dict) else node))
    return deepest


DURATIONS = st.sampled_from(["0s", "500ms", "1s", "30s", "5m", "1h30m", "2h", "7d", "99999999999d"])
# Plausible values beside what the schema allows, so that half the specs get past the parser and reach the
# code behind it: free text the schema cannot constrain (PromQL, columns, cron) and common shapes.
PLAUSIBLE_BY_PATH: dict[str, st.SearchStrategy[Any]] = {
    "model.storage": one_in(
        8,
        st.sampled_from(NODE_PATHS).map(lambda path: {"hostPath": {"path": path}}),  # the node's own (issue 22)
        st.sampled_from(
            [
                {"hostPath": {"path": "/data"}},
                {"persistentVolumeClaim": {"claimName": "c"}},
                {"persistentVolumeClaim": {"claimName": "c"}, "database": {"urlSecret": {"name": "db"}}},
                {
                    "s3": {"endpoint": "http://seaweedfs:8333", "bucket": "models", "credentialsSecret": "s3"},
                    "database": {"urlSecret": {"name": "db", "key": "dsn"}},
                },
                {
                    "s3": {
                        "endpoint": "https://s3.example.com",
                        "bucket": "models",
                        "prefix": "team-a",
                        "credentialsSecret": "s3",
                        "caSecret": {"name": "ca", "key": "ca.crt"},
                    },
                    "database": {"urlSecret": {"name": "db"}},
                },
            ]
        ),
    ),
    "model.retention.logs": st.sampled_from(["1d", "31d", "32d", "400d", "99999999999d"]),
    "monitoring.prometheus.url": st.sampled_from(["http://prometheus:9090", "https://p.monitoring.svc"]),
    "monitoring.prometheus.timeout": st.sampled_from(["1s", "10s", "60s", "61s"]),
    "monitoring.metrics[].query": TEMPLATES,
    "monitoring.metrics[].samplesQuery": TEMPLATES,
    "rollout.analysis.checks[].query": TEMPLATES,
    "retraining.features[]": COLUMNS,
    "retraining.target": COLUMNS,
    "retraining.schedule": st.sampled_from(
        ["*/5 * * * *", "0 3 * * 1-5", "61 * * * *", "0 0 31 2 *", "* * * * x", "0 3 * * SUN", "@weekly", "@every"]
    ),
    "retraining.timeZone": st.sampled_from(["Europe/Berlin", "America/New_York", "UTC", "Mars/Olympus", "Local"]),
    "retraining.hyperparameters": one_in(
        4,
        # nested up to thousands deep, or too many or too large values (issue 22)
        st.integers(1, 3000).map(lambda depth: {"nested": nest(depth)})
        | st.integers(60, 70).map(lambda count: {f"p{i}": i for i in range(count)})
        | st.integers(1000, 1100).map(lambda count: {"values": list(range(count))})
        | st.integers(16000, 17000).map(lambda size: {"text": "w" * size}),
        st.dictionaries(
            st.sampled_from(["max_iter", "alpha", "loss"]),
            st.integers(0, 1000) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
            max_size=2,
        ),
    ),
}
PLAUSIBLE_BY_PATTERN: dict[str, st.SearchStrategy[Any]] = {
    api.DURATION_PATTERN: DURATIONS,
    api.DNS_LABEL_PATTERN: st.sampled_from(["churn", "m-1"]),
    "^/": st.sampled_from(["/data", "/var/lib/mfl/artifacts", "/var/run/mfl-scratch/", "/"]),
}


def from_schema(node: dict[str, Any], path: str = "") -> st.SearchStrategy[Any]:
    strategy = _typed(node, path)
    plausible = PLAUSIBLE_BY_PATH.get(path, PLAUSIBLE_BY_PATTERN.get(node.get("pattern", "")))
    if plausible is not None:  # three draws in four
        strategy = st.integers(0, 3).flatmap(lambda pick, schema=strategy: schema if pick == 0 else plausible)
    return st.none() | strategy if node.get("nullable") else strategy


def _typed(node: dict[str, Any], path: str) -> st.SearchStrategy[Any]:
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "object":
        return _object(node, path)
    if kind == "array":
        items = from_schema(node["items"], f"{path}[]")
        return st.lists(
            items, min_size=node.get("minItems", 0), max_size=min(node.get("maxItems", MAX_ITEMS), MAX_ITEMS)
        )
    if kind == "string":
        return _string(node)
    if kind == "integer":
        low = node.get("minimum", INT64[0]) + (1 if node.get("exclusiveMinimum") else 0)
        high = node.get("maximum", INT64[1]) - (1 if node.get("exclusiveMaximum") else 0)
        return st.integers(low, high)
    if kind == "number":
        return st.floats(
            node.get("minimum"),
            node.get("maximum"),
            exclude_min=bool(node.get("exclusiveMinimum")),
            exclude_max=bool(node.get("exclusiveMaximum")),
            allow_nan=False,  # JSON has no NaN or infinity: the API server cannot store them
            allow_infinity=False,
        )
    if kind == "boolean":
        return st.booleans()
    raise AssertionError(f"{path}: no strategy for {node}")


def _object(node: dict[str, Any], path: str) -> st.SearchStrategy[Any]:
    properties = node.get("properties", {})
    if not properties:
        extra = node.get("additionalProperties")
        values = from_schema(extra, f"{path}{{}}") if isinstance(extra, dict) else st.integers(0, 9)
        return st.dictionaries(st.text(min_size=1, max_size=5), values, max_size=2)
    children = {key: from_schema(value, f"{path}.{key}".lstrip(".")) for key, value in properties.items()}
    required = set(node.get("required", []))
    return st.fixed_dictionaries(
        {k: s for k, s in children.items() if k in required},
        optional={k: s for k, s in children.items() if k not in required},
    )


def _string(node: dict[str, Any]) -> st.SearchStrategy[str]:
    low, high = node.get("minLength", 0), node.get("maxLength", 30)
    if "pattern" not in node:
        return st.text(min_size=low, max_size=min(high, 30))
    # The API server matches a pattern anywhere (Go's MatchString), where `$` is the end of the text.
    pattern = re.compile(re.sub(r"\$$", r"\\Z", node["pattern"]))  # the anchor only: `$` in a class is a character
    return (
        st.from_regex(pattern)
        .map(lambda text: text[:high])
        .filter(lambda text: len(text) >= low and pattern.search(text) is not None)
    )


SPECS = from_schema(SPEC_SCHEMA)
# metadata.name: any DNS-1123 subdomain the API server accepts, with the awkward ones made likely.
LOOP_NAMES = st.sampled_from(["churn", "1churn", "churn.v2", "a" * 63, "b" * 64, "c" * 253, "d" * 52 + ".ef"]) | (
    st.from_regex(DNS_SUBDOMAIN_PATTERN, fullmatch=True).filter(lambda name: len(name) <= 253)
)


# --- the property -----------------------------------------------------------------------------------------


@settings(
    max_examples=int(os.environ.get("MFL_SPEC_EXAMPLES", 300)),
    deadline=None,
    derandomize=not os.environ.get("MFL_SPEC_EXAMPLES"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(raw=SPECS, name=LOOP_NAMES, data=st.data())
def test_every_spec_the_crd_accepts_works_or_is_invalid_naming_the_field(
    raw: dict[str, Any], name: str, data: st.DataObject
) -> None:
    admin = AdminSettings(allow_host_path=data.draw(one_in(4, st.just(False), st.just(True)), label="hostPath"))
    spec, error = validation.parse_spec(raw, admin)
    note(f"parse_spec: {error or 'valid'}")
    event("valid" if spec else f"invalid: {error.split(':')[0]}")
    if spec is None:
        assert_names_a_spec_field(error)
        return
    assert_within_the_bounds(spec, admin)
    for world in worlds(spec, name, data):
        decision = decide(world)
        json.dumps(decision.status, allow_nan=False)  # a non-finite number makes the status patch invalid
    assert_children_are_valid(spec, name)


def assert_within_the_bounds(spec: ModelFeedbackLoopSpec, admin: AdminSettings) -> None:
    """What issue 22 bounds, checked on every spec the operator accepted, independently of how it checks."""
    host_path = spec.model.storage.host_path
    if host_path is not None:
        path = host_path.path
        assert admin.allow_host_path, "hostPath accepted though the admin does not allow it"
        assert path != "/" and not {"", ".", ".."} & set(path.split("/")[1:]), path
        assert not any(path == f or path.startswith(f + "/") or f.startswith(path + "/") for f in NODE_FOLDERS), path
    if spec.retraining is not None:
        assert depth_of(spec.retraining.hyperparameters) <= api.MAX_HYPERPARAMETER_DEPTH
        assert len(json.dumps(spec.retraining.hyperparameters)) <= api.MAX_HYPERPARAMETER_BYTES
    values = {"model": spec.model.name, "namespace": "team-a", "version": "7", "track": "stable"}
    templates = [rule.query for rule in spec.monitoring.metrics] + [c.query for c in spec.rollout.analysis.checks]
    templates += [rule.samples_query for rule in spec.monitoring.metrics if rule.samples_query is not None]
    for template in templates:
        promql_parser.parse(promql.render(template, values))  # raises on a query that does not parse


def assert_names_a_spec_field(error: str) -> None:
    found = re.match(r"spec\.([\w.\[\]]+): ", error)
    assert found, f"the message names no spec field: {error!r}"
    node = SPEC_SCHEMA
    for part in re.split(r"[.\[\]]+", found.group(1)):
        if not part or part.isdigit():
            node = node.get("items", node)
            continue
        assert part in node.get("properties", {}), f"{found.group(1)!r} is not a field of the CRD: {error!r}"
        node = node["properties"][part]


# --- the bounds of issue 22, drawn into a spec that is otherwise valid ---------------------------------------

BOUNDED_BASE: dict[str, Any] = {
    "model": {"name": "churn", "storage": {"persistentVolumeClaim": {"claimName": "c"}}},
    "monitoring": {"prometheus": {"url": "http://prometheus:9090"}},
    "retraining": {"features": ["a", "b"], "target": "y"},
}
# Templates whose strings hold no quote: removing any quote, or a closing bracket outside them, breaks them.
GOOD_TEMPLATES = [
    'sum(rate(mfl_requests_total{model="{{model}}",namespace="{{namespace}}"}[5m]))',
    'histogram_quantile(0.99, sum by (le) (rate(x_bucket{model="{{model}}",track="{{track}}"}[5m])))',
    'sum(increase(ok{version="{{version}}"}[10m])) / sum(increase(all{version="{{version}}"}[10m]))',
]
SLOTS = ["monitoring.metrics[].query", "monitoring.metrics[].samplesQuery", "rollout.analysis.checks[].query"]
SEGMENTS = ["srv", "mfl", "data", "tmp", "a-b", "...", "..", ".", "", "proc", "etc", "var", "lib", "kubelet", "run"]
SYSTEM = ("/proc", "/etc", "/lib", "/run", "/var/run", "/var/lib/kubelet")  # all SEGMENTS can make
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.text(max_size=3),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=2), children, max_size=3),
    max_leaves=40,
)


@st.composite
def broken_or_good_template(draw: st.DrawFn) -> tuple[str, bool]:
    template = draw(st.sampled_from(GOOD_TEMPLATES))
    if draw(st.booleans()):
        return template, True
    closing, inside = [], False  # a closing bracket outside the strings (a placeholder's braces are text), a quote
    for i, char in enumerate(template):
        inside = inside != (char == '"')
        if char == '"' or (not inside and char in ")]}"):
            closing.append(i)
    cut = draw(st.sampled_from(closing))
    return template[:cut] + template[cut + 1 :], False


@settings(max_examples=int(os.environ.get("MFL_SPEC_EXAMPLES", 200)), deadline=None, derandomize=True)
@given(slot=st.sampled_from(SLOTS), index=st.integers(0, 2), drawn=broken_or_good_template())
def test_a_template_that_does_not_parse_is_refused_naming_its_field(
    slot: str, index: int, drawn: tuple[str, bool]
) -> None:
    template, good = drawn
    raw = json.loads(json.dumps(BOUNDED_BASE))
    rules = [{"name": f"r{i}", "query": GOOD_TEMPLATES[0], "min": 0} for i in range(3)]
    checks = [{"name": f"c{i}", "query": GOOD_TEMPLATES[0], "max": 1} for i in range(3)]
    if slot == "monitoring.metrics[].samplesQuery":
        rules[index] |= {"minSamples": 1, "samplesQuery": template}
    else:
        (rules if slot.startswith("monitoring") else checks)[index]["query"] = template
    raw["monitoring"]["metrics"], raw["rollout"] = rules, {"analysis": {"checks": checks}}
    spec, error = validation.parse_spec(raw)
    if good:
        assert spec is not None, error
        return
    owner = f"metric r{index}" if slot.startswith("monitoring") else f"check c{index}"
    assert error.startswith(f"spec.{slot.replace('[]', f'[{index}]')}: {owner}: the query "), error
    assert_names_a_spec_field(error)


@settings(max_examples=int(os.environ.get("MFL_SPEC_EXAMPLES", 200)), deadline=None, derandomize=True)
@given(
    hyperparameters=st.dictionaries(st.text(max_size=3), JSON, max_size=4)
    | st.integers(1, 5000).map(lambda depth: {"nested": nest(depth)})
    | st.integers(1, 12).flatmap(lambda depth: st.just({"chain": nest(depth)}))
)
def test_hyperparameters_beyond_the_bounds_are_refused_naming_the_field(hyperparameters: dict[str, Any]) -> None:
    raw = json.loads(json.dumps(BOUNDED_BASE))
    raw["retraining"]["hyperparameters"] = hyperparameters
    spec, error = validation.parse_spec(raw)  # never a RecursionError: it would raise here
    deep = depth_of(hyperparameters) > api.MAX_HYPERPARAMETER_DEPTH
    event("deep" if deep else "within")
    if deep:
        assert spec is None and error.startswith("spec.retraining.hyperparameters: "), error
        assert f"deeper than {api.MAX_HYPERPARAMETER_DEPTH} levels" in error
    else:
        assert spec is not None, error  # small: the other bounds are far
        assert spec.retraining is not None and spec.retraining.hyperparameters == hyperparameters


@settings(max_examples=int(os.environ.get("MFL_SPEC_EXAMPLES", 300)), deadline=None, derandomize=True)
@given(segments=st.lists(st.sampled_from(SEGMENTS), max_size=5), allowed=st.booleans())
def test_host_paths_are_only_a_folder_of_its_own_and_only_where_the_admin_allows(
    segments: list[str], allowed: bool
) -> None:
    path = "/" + "/".join(segments)
    raw = json.loads(json.dumps(BOUNDED_BASE))
    raw["model"]["storage"] = {"hostPath": {"path": path}}
    spec, error = validation.parse_spec(raw, AdminSettings(allow_host_path=allowed))
    own = (
        bool(segments)
        and not {"", ".", ".."} & set(segments)
        and not any(path == s or path.startswith(s + "/") or s.startswith(path + "/") for s in SYSTEM)
    )
    event(f"own folder: {own}, allowed: {allowed}")
    if own and allowed:
        assert spec is not None, error
        return
    assert spec is None and error.startswith("spec.model.storage.hostPath"), (path, error)
    assert_names_a_spec_field(error)
    schema = SPEC_SCHEMA["properties"]["model"]["properties"]["storage"]["properties"]["hostPath"]
    if not own:  # refused whatever the admin says, by the API server's pattern where it can
        assert "MFL_ALLOW_HOST_PATH" not in error, error
        assert re.search(schema["properties"]["path"]["pattern"], path) is None or api.host_path_problem(path)


# --- worlds -------------------------------------------------------------------------------------------


def worlds(spec: ModelFeedbackLoopSpec, name: str, data: st.DataObject) -> list[World]:
    serving = ServingObservation(stable_version=1, stable_ready=2, stable_replicas=2)
    monitoring = {"currentVersion": 1, "phase": phases.MONITORING, "lastRetrainAt": format_time(NOW - 7200)}
    training = {
        **monitoring,
        "phase": phases.RETRAINING,
        "retraining": {
            "version": 2,
            "jobName": "j",
            "trigger": "Breach",
            "startedAt": format_time(NOW - 60),
            "parentVersion": 1,
        },
    }
    metric = spec.retraining.gate.metric if spec.retraining else "accuracy"
    scores = st.floats(0, 1) | st.floats(allow_nan=False, allow_infinity=False)
    summary = {"ok": True, "challenger": {metric: data.draw(scores)}, "champion": {metric: data.draw(scores)}}
    step = data.draw(st.integers(0, len(spec.rollout.steps) - 1))
    rollout = {
        **monitoring,
        "phase": phases.CANARY,
        "rollout": {
            "version": 2,
            "step": step,
            "weight": 33,
            "startedAt": format_time(NOW - 60),
            "stepStartedAt": format_time(NOW - 60),
            "analysisPhase": "Running",
            "consecutiveErrors": 0,
            "evidence": [],
            "paused": False,
        },
    }
    later = NOW + data.draw(st.sampled_from([0.0, 3600.0, 10 * 86400.0]))
    observation = data.draw(canary_observations(spec))
    config = canary.analysis_config(spec.rollout.analysis, spec.model.task)  # must not raise either
    assert config.check_names()

    def world(status: dict[str, Any], **kw: Any) -> World:
        return World(now=kw.pop("now", NOW), name=name, generation=1, spec=spec, status=status, **kw)  # type: ignore[arg-type]

    return [
        world({}),
        world(monitoring, samples=data.draw(polls(spec)), serving=serving, requests={"retrain": "r1"}),
        world(training, job=JobObservation("j", "Succeeded", "done", summary), serving=serving),
        world(training, job=JobObservation("j", "Failed", "BackoffLimitExceeded"), serving=serving),
        world(rollout, canary=observation, serving=serving),
        world(rollout, canary=observation, serving=serving, now=later),
    ]


def polls(spec: ModelFeedbackLoopSpec) -> st.SearchStrategy[Any]:
    """One to three polls since the last reconcile (decide judges them in order), some for another version."""
    rules = rules_of(spec.monitoring, spec.model.task)
    # NaN is no data; +-Inf (histogram_quantile in the +Inf bucket) is left out: see test_spec_holes.py.
    values = st.none() | st.just(float("nan")) | st.floats(allow_infinity=False) | st.floats(-1, 2)
    samples = st.none() | st.floats(0, 1e6)
    errors = st.just("") | st.just("query to http://p failed: timed out")
    versions = st.none() | st.sampled_from([1, 2])
    one = st.tuples(*(st.tuples(values, samples, errors, versions) for _ in rules)).map(
        lambda drawn: {
            rule.name: Sample(value if not error else None, NOW, error=error, samples=count, version=version)
            for rule, (value, count, error, version) in zip(rules, drawn, strict=True)
        }
    )
    return st.lists(one, min_size=1, max_size=3).map(tuple)


def arms() -> st.SearchStrategy[tuple[ArmCounts, ArmCounts] | None]:
    def arm(total: int, share: float) -> ArmCounts:
        return ArmCounts(round(total * share), total)

    one = st.builds(arm, st.integers(0, 10**6), st.floats(0, 1))
    return st.none() | st.tuples(one, one)


def canary_observations(spec: ModelFeedbackLoopSpec) -> st.SearchStrategy[CanaryObservation]:
    def buckets(counts: list[int]) -> dict[float, float]:
        edges = [0.005, 0.05, 0.5, float("inf")][: len(counts)]
        return {edge: float(sum(counts[: i + 1])) for i, edge in enumerate(edges)}

    histogram = st.lists(st.integers(0, 10**5), min_size=1, max_size=4).map(buckets)
    names = [check.name for check in spec.rollout.analysis.checks]
    checks = st.fixed_dictionaries({name: st.none() | st.floats() for name in names})
    return st.builds(
        CanaryObservation,
        accuracy=arms(),
        availability=arms(),
        latency=st.none() | st.tuples(histogram, histogram),
        checks=checks,
        error=st.sampled_from(["", "", "", "query refused"]),
    )


# --- the objects the operator would create -------------------------------------------------------------

DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
SUBDOMAIN = re.compile(DNS_SUBDOMAIN_PATTERN)


def assert_children_are_valid(spec: ModelFeedbackLoopSpec, name: str) -> None:
    loop = {"metadata": {"name": name, "namespace": "team-a", "uid": "u-1"}}
    deployments = [resources.server_deployment(loop, spec, 2, track, 1) for track in ("stable", "canary")]
    services = [resources.service(loop, spec, track) for track in (None, "stable", "canary")]
    objects = [*deployments, *services, resources.signing_secret(loop, "k")]
    if spec.retraining is not None:
        objects.append(resources.training_job(loop, spec, "churn-train-v2", 2, 1, "Breach"))
    for body in objects:
        kind, object_name = body["kind"], body["metadata"]["name"]
        if kind == "Service":
            assert len(object_name) <= 63 and DNS1035.fullmatch(object_name), f"Service {object_name!r}"
        else:
            limit = resources.MAX_DEPLOYMENT if kind == "Deployment" else 253
            assert len(object_name) <= limit and SUBDOMAIN.fullmatch(object_name), f"{kind} {object_name!r}"
        for labels in label_sets(body):
            for key, value in labels.items():
                assert len(value) <= 63 and resources.LABEL_VALUE.fullmatch(value), f"{kind} label {key}={value!r}"
        json.dumps(body, allow_nan=False)
    route = resources.http_route_weights({"spec": {"rules": [{}]}}, name, 20)
    assert [ref["name"] for ref in route["spec"]["rules"][0]["backendRefs"]] == [
        services[1]["metadata"]["name"],
        services[2]["metadata"]["name"],
    ]


def label_sets(body: dict[str, Any]) -> list[dict[str, str]]:
    spec = body.get("spec", {})
    template = spec.get("template", {}).get("metadata", {})
    sets = [body["metadata"].get("labels", {}), template.get("labels", {})]
    if body["kind"] == "Service":
        sets.append(spec["selector"])
    if body["kind"] == "Deployment":
        sets.append(spec["selector"]["matchLabels"])
    return sets
