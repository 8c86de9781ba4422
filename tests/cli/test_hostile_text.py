"""What `mfl` shows of others' text is inert, and no status the CRD admits stops a view (issue 22, build 3).

A loop's status quotes a trainer's termination message, a Prometheus error, a Pod's waiting message; a
bucket holds the trainer's metadata and report; a server answers `feedback import` and `conformance`. Each
may carry terminal escape sequences (colours, OSC 8 links, OSC 52 clipboard writes), BEL, backspace, carriage
return, C1 controls or bidi overrides. Fault injection: each reaches every view it is shown in, through the
real command (`execute`, as `main` runs it), and must come out inert, as its visible escape, with no line
forged. Property: statuses drawn from the CRD's own status schema (crdgen.crd(), so the test follows the
models), with hostile text in every string, and the same schema loosened (any field absent, null or of any
JSON shape), run through every view (`get` and its -A/-o variants, `status` and -o, `versions`): no crash,
nothing forbidden in the output.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedbackloop import crdgen
from mfl_cli import cli, conformance, kube, labels, views

from .apiserver import FakeApiServer

FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"}
OSC52 = "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\x07"
OVERWRITE = "disk full\r\x1b[2Kall good"
BIDI = "accuracy \u202e0.99 < 0.8\u202c"
LINK = "\x1b]8;;https://evil.example/\x1b\\docs\x1b]8;;\x1b\\"
HOSTILE = OSC52 + OVERWRITE + BIDI + LINK + "\x9b31m\x07\x08\u2066\U000e0041"
FORGED = "ok\nStalled    True    Forged    2026-01-01T00:00:00Z  nothing to see"  # a row a newline would forge
HOSTILE_CHARS = sorted(set(HOSTILE + FORGED) | {"\t", "\r", "\x00", "\x7f", "\x85", "\u2028", "\ufeff", "\ud800"})
TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from(HOSTILE_CHARS), max_size=20) | st.sampled_from(
    [HOSTILE, FORGED, OSC52, "a\r\nb", ""]
)
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=8,
)


def bad(char: str, multiline: bool = True) -> bool:
    if multiline and char == "\n":
        return False
    return unicodedata.category(char) in FORBIDDEN_CATEGORIES


def assert_inert(text: str) -> None:
    found = sorted({f"U+{ord(c):04X}" for c in text if bad(c)})
    assert not found, f"{found} in:\n{text}"


def loop(status: Any, name: str = "churn", namespace: str = "prod") -> dict[str, Any]:
    return {
        "apiVersion": "feedbackloop.dev/v1alpha1",
        "kind": "ModelFeedbackLoop",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "generation": 3,
            "creationTimestamp": "2026-11-30T00:00:00Z",
            "resourceVersion": "7",
        },
        "spec": {
            "model": {"name": name, "storage": {"persistentVolumeClaim": {"claimName": "c"}}},
            "rollout": {"steps": [{"weight": 10}, {"weight": 50}]},
        },
        "status": status,
    }


def hostile_status() -> dict[str, Any]:
    return {
        "phase": "Monitoring" + HOSTILE,
        "currentVersion": 2,
        "observedGeneration": 3,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "Why" + HOSTILE,
                "lastTransitionTime": "t",
                "message": FORGED,
            },
            {
                "type": "MetricsAvailable",
                "status": "False",
                "reason": "NoData",
                "lastTransitionTime": "t",
                "message": "accuracy: query failed: bad_data: " + OSC52,
            },
            {
                "type": "Retraining",
                "status": "False",
                "reason": "TrainingFailed",
                "lastTransitionTime": "t",
                "message": "version 3: " + OVERWRITE,
            },
        ],
        "metrics": [{"name": "accuracy" + BIDI, "state": "NoData", "message": OSC52, "sampleTime": LINK}],
        "retraining": {"version": 3, "trigger": "Breach" + OSC52, "jobName": "churn-train-v3", "startedAt": "t"},
        "retrainBlockedBy": "cooldown: " + HOSTILE,
        "candidate": {"version": 3, "gate": "passed " + BIDI},
        "rollout": {
            "version": 3,
            "step": 0,
            "weight": 10,
            "analysisPhase": "Running" + LINK,
            "startedAt": "t",
            "evidence": [{"name": "accuracy", "decision": "Pass", "message": "canary " + OVERWRITE}],
        },
        "history": [{"version": 1, "trigger": "Initial", "outcome": "TrainingFailed", "at": "t", "message": OSC52}],
    }


class FakeCustom:
    """The CustomObjectsApi calls `Loops` makes, over a list of loops (no HTTP: many examples per second)."""

    def __init__(self, loops: list[dict[str, Any]]) -> None:
        self.loops = loops

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **_):  # noqa: ANN001
        return next(x for x in self.loops if x["metadata"]["name"] == name and x["metadata"]["namespace"] == namespace)

    def list_namespaced_custom_object(self, group, version, namespace, plural, **_):  # noqa: ANN001
        return {"items": [x for x in self.loops if x["metadata"]["namespace"] == namespace]}

    def list_cluster_custom_object(self, group, version, plural, **_):  # noqa: ANN001
        return {"items": list(self.loops)}


PARSER = cli.build_parser()


def run(loops: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str, str]:
    """One command as `main` runs it (parsed, executed with its output made inert), over these loops."""
    monkeypatch.setattr(kube, "connect", lambda target: (kube.Loops(FakeCustom(loops)), target.namespace or "prod"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.execute(PARSER.parse_args(list(argv)))
    return code, out.getvalue(), err.getvalue()


# --- fault injection: each view, through the command ---------------------------------------------------------


def test_status_shows_hostile_condition_trainer_and_prometheus_text_inert(monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run([loop(hostile_status())], monkeypatch, "status", "churn")
    assert code == 0 and err == ""
    assert_inert(out)
    assert "\\x1b]52;c;" in out  # the Prometheus error and the trainer's message: shown, as their escapes
    assert "disk full\\r\\x1b[2Kall good" in out and "\\u202e" in out and "\\x9b31m" in out
    assert "Forged" in out and not any(line.startswith("Stalled") for line in out.splitlines())  # no row forged


def test_status_through_the_real_client_and_api_server(server_loop: FakeApiServer, capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as stop:
        cli.main(["status", "churn"])
    out, err = capsys.readouterr()
    assert stop.value.code == 0, err
    assert_inert(out) and "\\x1b]52;c;" in out


@pytest.fixture
def server_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    with FakeApiServer() as fake:
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        fake.add(loop(hostile_status()))
        yield fake


@pytest.mark.parametrize("argv", [["get"], ["get", "churn"], ["get", "-A"], ["status", "churn", "--watch"]])
def test_every_table_view_is_inert(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    if "--watch" in argv:
        monkeypatch.setattr(kube.Loops, "watch", lambda self, name, namespace: iter([self.get(name, namespace)]))
    code, out, _ = run([loop(hostile_status())], monkeypatch, *argv)
    assert code == 0
    assert_inert(out)
    assert "\\x1b]52" in out or "\\x1b]8" in out


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_raw_output_stays_the_object_and_inert(monkeypatch: pytest.MonkeyPatch, output: str) -> None:
    for argv in (["status", "churn", "-o", output], ["get", "churn", "-o", output]):
        code, out, _ = run([loop(hostile_status())], monkeypatch, *argv)
        assert code == 0
        assert_inert(out)
        parsed = json.loads(out) if output == "json" else __import__("yaml").safe_load(out)
        status = parsed if argv[0] == "status" else parsed["status"]
        assert status == hostile_status()  # escaped by the format, not changed: a script reads the true value


def test_an_error_message_is_one_inert_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(target: kube.Target) -> Any:
        raise kube.CliError("the API server answered 500: " + FORGED + HOSTILE)

    monkeypatch.setattr(kube, "connect", refuse)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.execute(PARSER.parse_args(["get"]))
    assert code == 1
    assert_inert(err.getvalue()) and err.getvalue().count("\n") == 1


def registry(tmp_path: Path, metadata: Any, report: Any) -> Path:
    folder = tmp_path / "churn" / "versions" / "2"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps(metadata))
    (folder / "report.json").write_text(json.dumps(report))
    return tmp_path


HOSTILE_METADATA = {
    "parentVersion": HOSTILE,
    "metrics": {"challenger": {"acc" + OSC52: 0.9, "f1": HOSTILE}},
    "rows": {"train": OVERWRITE},
}
HOSTILE_REPORT = {
    "model": "churn" + OSC52,
    "version": 2,
    "task": "classification" + BIDI,
    "target": "label",
    "holdout": {"rows": 10, "strategy": "random_base", "reason": FORGED},
    "trainingData": {
        "cut": {"method": HOSTILE, "ts": 1e300},
        "holdoutStrategy": OVERWRITE,
        "recipes": {"lr" + OSC52: 0.8},
    },
    "challenger": {
        "metrics": {"accuracy": 0.9, "f1" + BIDI: "x"},
        "confusion": {"labels": ["a" + OSC52, "b"], "matrix": [[1, 2], 3]},
        "perClass": [{"label": LINK, "precision": "high", "recall": 0.5, "f1": None, "support": HOSTILE}],
    },
    "champion": "not an object",
    "worstSlices": {"challenger": [{"feature": "f" + OSC52, "bin": OVERWRITE, "accuracy" + BIDI: 0.1, "rows": 5}]},
}


def test_versions_and_report_show_a_buckets_hostile_metadata_inert(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    storage = str(registry(tmp_path, HOSTILE_METADATA, HOSTILE_REPORT))
    code, out, err = run([loop(hostile_status())], monkeypatch, "versions", "churn", "--storage", storage)
    assert code == 0, err
    assert_inert(out) and "\\x1b]52" in out
    code, out, err = run([], monkeypatch, "report", "churn", "--offline", "--storage", storage, "--version", "2")
    assert code == 0, err
    assert_inert(out) and "\\x1b]52" in out and "\\u202e" in out


# The report's parts as the trainer writes them (None: any value); each part, at every level, may be of any
# JSON shape instead.
REPORT_SHAPE: dict[str, Any] = {
    **dict.fromkeys(["model", "version", "parentVersion", "task", "target", "metric"]),
    "holdout": dict.fromkeys(["rows", "strategy", "reason"]),
    "trainingData": {
        "cut": dict.fromkeys(["method", "ts", "errorBefore", "errorAfter", "pValue", "rowsBefore", "rowsAfter"]),
        **dict.fromkeys(["conceptSince", "trainFeedback", "trainBase", "holdoutStrategy", "recipes"]),
    },
    "paired": dict.fromkeys(["challengerOnly", "championOnly"]),
    **{
        role: {
            "metrics": None,
            "confusion": {"labels": [None], "matrix": [[None]]},
            "perClass": [dict.fromkeys(["label", "precision", "recall", "f1", "support"])],
        }
        for role in ("challenger", "champion")
    },
    "worstSlices": {"challenger": [dict.fromkeys(["feature", "bin", "rows", "accuracy"])]},
}


def shaped(template: Any) -> st.SearchStrategy[Any]:
    if isinstance(template, dict):
        return st.fixed_dictionaries({}, optional={k: shaped(v) for k, v in template.items()}) | ANY_JSON
    if isinstance(template, list):
        return st.lists(shaped(template[0]), max_size=3) | ANY_JSON
    return ANY_JSON


@given(shaped(REPORT_SHAPE).filter(lambda report: isinstance(report, dict)))
@settings(max_examples=200, deadline=None)
def test_a_report_of_any_shape_is_rendered_inert(report: dict[str, Any]) -> None:
    assert_inert(cli.render_report(report, None, ["churn/versions/2/confusion.png" + OSC52]))


def test_a_servers_answers_are_inert_in_import_and_conformance() -> None:
    row = labels.LabelRow(row=2, id="p-1" + OSC52, label="yes" + BIDI)
    table = labels.outcome_table([labels.Outcome(row, labels.REFUSED, "invalid" + OVERWRITE, FORGED)])
    assert_inert(table) and len(table.splitlines()) == 2
    report = conformance.Report("http://server:8080", model="m" + OSC52)
    report.checks.append(conformance.Check("infer", "fail", "the server answered 500: " + FORGED + HOSTILE))
    assert_inert(report.text()) and "\\x1b]52" in report.text() and len(report.text().splitlines()) == 2


# --- property: any status the CRD admits, and shapes it does not ---------------------------------------------

STATUS_SCHEMA = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]


def from_schema(node: dict[str, Any], loose: bool) -> st.SearchStrategy[Any]:
    """Values the schema admits (`loose`: also any JSON in any field, required fields left out)."""
    strategy = _typed(node, loose)
    if node.get("nullable"):
        strategy = st.none() | strategy
    return strategy | ANY_JSON if loose else strategy


def _typed(node: dict[str, Any], loose: bool) -> st.SearchStrategy[Any]:
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return ANY_JSON
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "object":
        properties = node.get("properties")
        if not properties:
            extra = node.get("additionalProperties")
            values = from_schema(extra, loose) if isinstance(extra, dict) else ANY_JSON
            return st.dictionaries(TEXT, values, max_size=3)
        children = {key: from_schema(value, loose) for key, value in properties.items()}
        required = set() if loose else set(node.get("required", []))
        return st.fixed_dictionaries(
            {k: s for k, s in children.items() if k in required},
            optional={k: s for k, s in children.items() if k not in required},
        )
    if kind == "array":
        return st.lists(from_schema(node["items"], loose), max_size=min(node.get("maxItems", 3), 3))
    if kind == "string":
        return TEXT
    if kind == "integer":
        return st.integers(-(2**63), 2**63 - 1)
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    raise AssertionError(f"no strategy for {node}")


VIEWS = [
    ["get"],
    ["get", "-A"],
    ["get", "churn"],
    ["get", "-o", "json"],
    ["get", "churn", "-o", "yaml"],
    ["status", "churn"],
    ["status", "churn", "-o", "yaml"],
    ["status", "churn", "--json"],
    ["versions", "churn"],
]
PARSED = [PARSER.parse_args(argv) for argv in VIEWS]


def every_view(statuses: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    loops = [loop(status, name) for status, name in zip(statuses, ("churn", "fraud", "other"))]
    monkeypatch.setattr(kube, "connect", lambda target: (kube.Loops(FakeCustom(loops)), target.namespace or "prod"))
    for argv, parsed in zip(VIEWS, PARSED):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.execute(copy.copy(parsed))
        assert code == 0, (argv, err.getvalue())
        assert_inert(out.getvalue())
        assert_inert(err.getvalue())


@given(statuses=st.lists(from_schema(STATUS_SCHEMA, loose=False), min_size=1, max_size=3))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_view_survives_any_status_the_schema_admits(statuses: list[Any], monkeypatch) -> None:  # noqa: ANN001
    every_view(statuses, monkeypatch)


@given(statuses=st.lists(from_schema(STATUS_SCHEMA, loose=True) | ANY_JSON, min_size=1, max_size=3))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_view_survives_statuses_of_unexpected_shapes(statuses: list[Any], monkeypatch) -> None:  # noqa: ANN001
    every_view(statuses, monkeypatch)


METADATA_SHAPE = {"parentVersion": None, "metrics": {"challenger": None}, "rows": {"train": None}}


@given(
    registry=st.dictionaries(st.integers(0, 5), shaped(METADATA_SHAPE).map(lambda m: m if isinstance(m, dict) else {})),
    status=from_schema(STATUS_SCHEMA, loose=True),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_versions_of_any_metadata_and_status_are_rendered_inert(registry, status, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(cli, "registry_versions", lambda store, model: registry)
    assert_inert(cli.render_versions(loop(status), Path("."), "churn"))


def test_views_helpers_read_odd_shapes_as_absent() -> None:
    assert views.mapping([1]) == {} and views.entries({"a": 1}) == [] and views.entries([1, {"a": 1}]) == [{"a": 1}]
    assert views.integer(True) == 0 and views.integer("3") == 0 and views.integer(3) == 3
    assert views.cell(None) == "" and views.cell("a\nb") == "a\\nb" and views.cell(OSC52, 8) == "\\x1b]..."
