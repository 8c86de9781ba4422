"""Issue 23, item 3: `mfl`/`kubectl mfl` take kubectl's flags with kubectl's meaning (-o wide|name|json|yaml|
jsonpath=|custom-columns=, -l, --field-selector, --no-headers, -A, -n, get -w, --request-timeout as a duration,
`version`), and exit as scripts expect: 0 done, 1 an error or an object not found, 2 a usage error, every error
one line starting with "mfl:". Against the local API server of tests/cli/apiserver.py, through the real
kubernetes client; the watch and its Ctrl-C through the installed `kubectl-mfl` script."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from mfl_cli import cli

from .apiserver import FakeApiServer
from .test_commands import CANARY, loop, mfl, server  # noqa: F401  (server: the fixture)


def labelled(name: str, namespace: str = "prod", **labels: str) -> dict:
    body = loop(name, namespace)
    body["metadata"]["labels"] = labels
    return body


@pytest.fixture
def three(server):  # noqa: F811
    server.add(labelled("churn", team="ml", tier="prod"))
    server.add(labelled("fraud", team="risk", tier="prod"))
    server.add(labelled("other", "staging", team="ml"))
    return server


# --- -o -------------------------------------------------------------------------------------------------------


def test_output_name_is_the_resource_and_name(three, capsys):
    code, out, _ = mfl(capsys, "get", "-o", "name")
    assert code == 0
    assert out == "modelfeedbackloop.feedbackloop.dev/churn\nmodelfeedbackloop.feedbackloop.dev/fraud\n"
    code, out, _ = mfl(capsys, "get", "other", "-n", "staging", "-o", "name")
    assert (code, out) == (0, "modelfeedbackloop.feedbackloop.dev/other\n")


def test_output_jsonpath_runs_over_the_list_or_the_object(three, capsys):
    code, out, _ = mfl(capsys, "get", "-o", "jsonpath={.items[*].metadata.name}")
    assert (code, out) == (0, "churn fraud")  # no newline added, as kubectl
    template = '-o=jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{"\\t"}{.status.phase}{"\\n"}{end}'
    code, out, _ = mfl(capsys, "get", "-A", template)
    assert out == "prod/churn\tMonitoring\nprod/fraud\tMonitoring\nstaging/other\tMonitoring\n"
    code, out, _ = mfl(capsys, "get", "churn", "-o", "jsonpath={.metadata.labels.team}")
    assert (code, out) == (0, "ml")


def test_output_jsonpath_of_nothing_found_runs_over_the_empty_list(server, capsys):  # noqa: F811
    code, out, err = mfl(capsys, "get", "-o", "jsonpath={.kind}:{.items[*].metadata.name}")
    assert (code, out, err) == (0, "List:", "")


def test_output_wide_adds_the_crds_other_printer_columns(server, capsys):  # noqa: F811
    body = loop("churn", summary="accuracy=0.91")
    body["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "Monitoring"}]
    server.add(body)
    code, out, _ = mfl(capsys, "get", "-o", "wide")
    header, row = out.splitlines()
    assert code == 0 and header.split() == [
        "NAME",
        "PHASE",
        "VERSION",
        "CANARY",
        "AGE",
        "MODEL",
        "READY",
        "REASON",
        "METRIC",
    ]
    assert row.split()[:4] == ["churn", "Monitoring", "3", "-"]
    assert row.split()[-4:] == [body["spec"]["model"]["name"], "True", "Monitoring", "accuracy=0.91"]


def test_output_custom_columns(three, capsys):
    code, out, _ = mfl(capsys, "get", "-o", "custom-columns=NAME:.metadata.name,TEAM:.metadata.labels.team,X:.nope")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["NAME", "TEAM", "X"],
        ["churn", "ml", "<none>"],
        ["fraud", "risk", "<none>"],
    ]


def test_status_report_and_versions_take_jsonpath(server, capsys, tmp_path):  # noqa: F811
    server.add(loop("churn", rollout=CANARY, phase="Canary"))
    code, out, _ = mfl(capsys, "status", "churn", "-o", "jsonpath={.rollout.weight}")
    assert (code, out) == (0, "50")
    folder = tmp_path / "store" / "churn" / "versions" / "1"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({"rows": {"train": 10}}))
    (folder / "report.json").write_text(json.dumps({"model": "churn", "version": 1, "holdout": {"rows": 7}}))
    store = ["--offline", "--storage", str(tmp_path / "store")]
    code, out, _ = mfl(capsys, "report", "churn", *store, "--version", "1", "-o", "jsonpath={.holdout.rows}")
    assert (code, out) == (0, "7")
    code, out, _ = mfl(capsys, "versions", "churn", *store, "-o", "json")
    assert (
        code == 0 and json.loads(out)["versions"][0] | {"version": 1, "trainRows": 10} == json.loads(out)["versions"][0]
    )
    code, out, _ = mfl(capsys, "versions", "churn", *store, "-o", "jsonpath={.versions[*].version}")
    assert (code, out) == (0, "1")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["get", "-o", "table"], "unable to match a printer suitable for the output format 'table'"),
        (["get", "-o", "jsonpath="], "jsonpath needs a template"),
        (["get", "-o", "jsonpath={.items["], "error parsing jsonpath"),
        (["get", "-o", "custom-columns=NAME"], "expected <header>:<json-path-expr>"),
        (["status", "churn", "-o", "name"], "allowed formats are: json, yaml, jsonpath=..."),
        (["version", "-o", "wide"], "allowed formats are: json, yaml"),
    ],
)
def test_an_output_format_a_verb_does_not_take_is_a_usage_error(capsys, argv, message):
    code, out, err = mfl(capsys, *argv)
    assert (code, out) == (2, "") and err.startswith("mfl: ") and message in err, err
    assert err.endswith(f"See 'mfl {argv[0]} --help' for usage.\n")


# --- selectors, namespaces, headers -----------------------------------------------------------------------------


def test_label_selector_is_sent_to_the_api_server(three, capsys):
    code, out, _ = mfl(capsys, "get", "-A", "-l", "team=ml", "-o", "name")
    assert code == 0 and out.split() == [
        "modelfeedbackloop.feedbackloop.dev/churn",
        "modelfeedbackloop.feedbackloop.dev/other",
    ]
    assert server_query(three)["labelSelector"] == "team=ml"
    code, out, _ = mfl(capsys, "get", "--selector", "team in (ml,risk),tier!=test", "-o", "name")
    assert code == 0 and len(out.split()) == 2
    code, out, err = mfl(capsys, "get", "-l", "team=nobody")
    assert (code, out) == (0, "") and "no modelfeedbackloops found in namespace 'prod'" in err


def test_field_selector_is_sent_to_the_api_server(three, capsys):
    code, out, _ = mfl(capsys, "get", "-A", "--field-selector", "metadata.namespace=staging", "-o", "name")
    assert (code, out) == (0, "modelfeedbackloop.feedbackloop.dev/other\n")
    assert server_query(three)["fieldSelector"] == "metadata.namespace=staging"


def server_query(fake: FakeApiServer) -> dict:
    return [r for r in fake.requests if r["method"] == "GET"][-1]["query"]


@pytest.mark.parametrize("flags", [[], ["-o", "wide"], ["-A"], ["-o", "custom-columns=N:.metadata.name"]])
def test_no_headers_drops_the_header_of_every_table(three, capsys, flags):
    _, with_header, _ = mfl(capsys, "get", *flags)
    code, out, _ = mfl(capsys, "get", "--no-headers", *flags)
    assert code == 0 and [line.split() for line in out.splitlines()] == [
        line.split() for line in with_header.splitlines()[1:]
    ]
    assert out.splitlines()[0].split()[0] in ("churn", "prod")


def test_watching_a_loop_that_is_not_there_is_not_found(three, capsys):
    code, out, err = mfl(capsys, "get", "nope", "-w")
    assert (code, out) == (1, "") and err == "mfl: modelfeedbackloop 'nope' not found in namespace 'prod'\n"
    assert not any(r["query"].get("watch") for r in three.requests)


def test_a_name_with_a_selector_or_all_namespaces_is_a_usage_error(three, capsys):
    for flags in (["-A"], ["-l", "team=ml"], ["--field-selector", "metadata.name=churn"]):
        code, out, err = mfl(capsys, "get", "churn", *flags)
        assert (code, out) == (2, "") and err.startswith("mfl: a loop's name cannot be given with -A"), flags


# --- --request-timeout ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", None), ("30s", 30.0), ("1m", 60.0), ("1m30s", 90.0), ("500ms", 0.5), ("20", 20.0)]
)
def test_request_timeout_takes_kubectls_forms(text, seconds):
    assert cli.request_timeout(text) == seconds
    assert cli.build_parser().parse_args(["get", "--request-timeout", text]).request_timeout == seconds


@pytest.mark.parametrize("text", ["soon", "-5s", "1x"])
def test_a_bad_request_timeout_is_a_usage_error(capsys, text):
    code, _, err = mfl(capsys, "get", f"--request-timeout={text}")
    assert code == 2 and err.startswith("mfl: argument --request-timeout: invalid duration"), err


def test_a_duration_timeout_ends_a_request_that_gets_no_answer(server, capsys):  # noqa: F811
    server.stall.set()
    started = time.monotonic()
    code, _, err = mfl(capsys, "get", "--request-timeout", "300ms")
    assert code == 1 and "no answer in time (read timeout)" in err and time.monotonic() - started < 10


# --- version ----------------------------------------------------------------------------------------------------


def deployment(namespace: str = "feedbackloop-system", labels: dict | None = None, image: str = "") -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "feedbackloop-operator",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "feedbackloop-operator", **(labels or {})},
        },
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "feedbackloop-operator"}},
            "template": {
                "metadata": {},
                "spec": {"containers": [{"name": "operator", "image": image or "ghcr.io/x/mfl-operator:0.0.9"}]},
            },
        },
    }


def test_version_client_needs_no_cluster(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    code, out, _ = mfl(capsys, "version", "--client")
    assert (code, out) == (0, f"Client Version: {cli.client_version()}\n")
    assert cli.client_version()[0].isdigit()  # the installed distribution's version
    code, out, _ = mfl(capsys, "version", "--client", "-o", "json")
    assert json.loads(out) == {"clientVersion": {"version": cli.client_version()}}


def test_version_reads_the_operators_version_label(server, capsys):  # noqa: F811
    server.deployments.append(deployment(labels={"app.kubernetes.io/version": "0.2.0"}))
    code, out, _ = mfl(capsys, "version")
    assert code == 0
    assert out.splitlines() == [
        f"Client Version: {cli.client_version()}",
        "Operator Version: 0.2.0 (feedbackloop-system/feedbackloop-operator, ghcr.io/x/mfl-operator:0.0.9)",
    ]
    request = [r for r in server.requests if "deployments" in r["path"]][-1]
    assert request["path"] == "/apis/apps/v1/namespaces/feedbackloop-system/deployments"
    assert request["query"]["labelSelector"] == "app.kubernetes.io/name=feedbackloop-operator"
    code, out, _ = mfl(capsys, "version", "-o", "yaml")
    assert yaml.safe_load(out)["operatorVersion"]["version"] == "0.2.0"


def test_version_falls_back_to_the_image_tag_and_takes_the_operators_namespace(server, capsys):  # noqa: F811
    server.deployments.append(deployment("mfl", image="registry:5000/team/mfl-operator:1.4.2"))
    code, out, _ = mfl(capsys, "version", "--operator-namespace", "mfl", "-o", "json")
    assert code == 0 and json.loads(out)["operatorVersion"]["version"] == "1.4.2"
    server.deployments[0]["spec"]["template"]["spec"]["containers"][0]["image"] = "registry:5000/mfl-operator@sha256:ab"
    code, out, _ = mfl(capsys, "version", "--operator-namespace", "mfl", "-o", "json")
    assert json.loads(out)["operatorVersion"]["version"] == "unknown"  # a digest names no version


def test_version_without_an_operator_prints_the_client_and_exits_1(server, capsys):  # noqa: F811
    code, out, err = mfl(capsys, "version")
    assert code == 1 and out == f"Client Version: {cli.client_version()}\n"
    assert err == (
        "mfl: no operator Deployment labelled app.kubernetes.io/name=feedbackloop-operator in namespace "
        "'feedbackloop-system' (--operator-namespace, --operator-selector)\n"
    )


def test_version_with_an_unreachable_cluster_exits_1(tmp_path, capsys, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with FakeApiServer() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "k", server=f"http://127.0.0.1:{port}")))
    code, out, err = mfl(capsys, "version")
    assert code == 1 and out.startswith("Client Version: ") and "connection refused" in err
    assert err.startswith("mfl: ") and err.count("\n") == 1


# --- exit codes -------------------------------------------------------------------------------------------------


def test_usage_errors_exit_2_and_say_mfl(capsys):
    for argv in (["get", "--bogus"], ["nosuchverb"], ["status"], ["get", "-o"]):
        code, out, err = mfl(capsys, *argv)
        assert (code, out) == (2, "") and err.startswith("mfl: ") and "Traceback" not in err, argv


def test_versions_offline_without_a_store_is_an_error_not_an_empty_answer(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    code, out, err = mfl(capsys, "versions", "churn", "--offline")
    assert (code, out) == (2, "") and err.startswith("mfl: --offline reads only the artifact store, and none is given")
    code, out, err = mfl(capsys, "versions", "churn", "--offline", "--storage", str(tmp_path / "empty"))
    assert (code, out) == (1, "") and err.startswith("mfl: no versions of model 'churn' in "), err


def test_report_offline_without_a_store_says_mfl(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    code, out, err = mfl(capsys, "report", "churn", "--offline")
    assert (code, out) == (2, "") and err.startswith("mfl: --offline reads only the artifact store, and none is given")
    assert err.count("\n") == 1


def test_report_without_a_reachable_store_is_an_error(server, capsys):  # noqa: F811
    server.add(loop("churn"))  # the example's store is a PersistentVolumeClaim: not reachable from here
    code, out, err = mfl(capsys, "report", "churn")
    assert (code, out) == (1, "") and err.startswith("mfl: the artifact store is not reachable from here")


# --- get -w, through the installed script (Ctrl-C is a real SIGINT) --------------------------------------------


@pytest.fixture(scope="module")
def script() -> Path:
    path = Path(sys.executable).parent / "kubectl-mfl"
    assert path.exists(), "kubectl-mfl is not installed: pip install -e '.[test]' (pyproject [project.scripts])"
    return path


class Running:
    """A `kubectl-mfl` process whose stdout lines are read as they come."""

    def __init__(self, argv: list, env: dict) -> None:
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's Ctrl-C
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def next_lines(self, count: int, timeout: float = 30) -> list[str]:
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            try:
                got.append(self.lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                raise AssertionError(f"only {got} after {timeout}s; stderr: {self.stop()[1]}") from None
        return got

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGINT)
        _, err = self.process.communicate(timeout=30)
        return self.process.returncode, err


def wait_for_watch(fake: FakeApiServer) -> None:
    deadline = time.monotonic() + 30
    while not any(r["query"].get("watch") for r in fake.requests):
        assert time.monotonic() < deadline, "no watch request"
        time.sleep(0.05)


@pytest.mark.integration
def test_get_watch_prints_a_row_per_change_and_ctrl_c_exits_0(script, tmp_path):
    with FakeApiServer() as fake:
        fake.add(labelled("churn", team="ml"))
        fake.add(labelled("fraud", team="risk"))
        env = {**os.environ, "KUBECONFIG": str(fake.kubeconfig(tmp_path / "k"))}
        watch = Running([script, "get", "-w", "-l", "team=ml"], env)
        header, first = watch.next_lines(2)
        assert header.split() == ["NAME", "PHASE", "VERSION", "CANARY", "AGE"] and first.split()[:2] == [
            "churn",
            "Monitoring",
        ]
        wait_for_watch(fake)
        fake.change("prod", "fraud", {"phase": "Breached"})  # not selected: not printed
        fake.change("prod", "churn", {"phase": "Retraining"})
        fake.change("prod", "churn", {"phase": "Canary", "rollout": CANARY})
        assert [line.split()[:2] for line in watch.next_lines(2)] == [["churn", "Retraining"], ["churn", "Canary"]]
        code, err = watch.stop()
    assert code == 0 and "Traceback" not in err, err
    query = [r for r in fake.requests if r["query"].get("watch")][0]["query"]
    assert query["labelSelector"] == "team=ml" and query["resourceVersion"]


@pytest.mark.integration
def test_get_watch_only_of_one_loop_as_names(script, tmp_path):
    with FakeApiServer() as fake:
        fake.add(loop("churn"))
        fake.add(loop("fraud"))
        env = {**os.environ, "KUBECONFIG": str(fake.kubeconfig(tmp_path / "k"))}
        watch = Running([script, "get", "churn", "--watch-only", "-o", "name"], env)
        wait_for_watch(fake)
        fake.change("prod", "fraud", {"phase": "Breached"})
        fake.change("prod", "churn", {"phase": "Breached"})
        assert watch.next_lines(1) == ["modelfeedbackloop.feedbackloop.dev/churn"]
        code, err = watch.stop()
    assert code == 0, err
    query = [r for r in fake.requests if r["query"].get("watch")][0]["query"]
    assert query["fieldSelector"] == "metadata.name=churn"


# --- through the real kubectl: its plugin mechanism finds `kubectl-mfl` on PATH and execs it -----------------


@pytest.fixture(scope="module")
def kubectl() -> Path:
    from mfl_testbed.controlplane import binaries_dir

    path = binaries_dir() / "kubectl"  # the test bed's kubectl 1.20 (make control-plane), no cluster started
    if not os.access(path, os.X_OK):
        pytest.skip(f"no kubectl at {path}: make control-plane builds it")
    return path


@pytest.mark.integration
def test_kubectl_runs_the_plugin_with_kubectls_flags_and_passes_its_exit_codes(kubectl, script, tmp_path):
    with FakeApiServer() as fake:
        fake.add(labelled("churn", team="ml"))
        fake.add(labelled("fraud", team="risk"))
        fake.deployments.append(deployment(labels={"app.kubernetes.io/version": "0.3.0"}))
        env = {
            **os.environ,
            "KUBECONFIG": str(fake.kubeconfig(tmp_path / "k")),
            "PATH": f"{script.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }

        def run(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([kubectl, "mfl", *argv], capture_output=True, text=True, env=env, timeout=60)

        assert run("get", "-l", "team=ml", "-o", "name").stdout == "modelfeedbackloop.feedbackloop.dev/churn\n"
        assert run("get", "-o", "jsonpath={.items[*].metadata.name}").stdout == "churn fraud"
        assert [line.split()[0] for line in run("get", "--no-headers").stdout.splitlines()] == ["churn", "fraud"]
        assert run("version").stdout.splitlines()[1].startswith("Operator Version: 0.3.0 ")
        usage = run("get", "--bogus")
        assert (usage.returncode, usage.stdout) == (2, "") and usage.stderr.startswith("kubectl mfl: unrecognized")
        missing = run("get", "nope")
        assert missing.returncode == 1
        assert missing.stderr == "kubectl mfl: modelfeedbackloop 'nope' not found in namespace 'prod'\n"
