"""`mfl conformance URL`: does a running server meet the project's serving contract?

The contract (docs/contracts.md, "Open Inference Protocol"): V2 health and metadata, an infer answer that
carries one signed prediction id per row (the `mfl_prediction_id` output tensor and the
`mfl-prediction-ids` header), labels for those ids accepted exactly once at
`POST /v2/models/{model}/feedback`, and the `mfl_*` series (mfl_contracts.metrics) at `/metrics`, where
one accepted label moves `mfl_feedback_total` of the prediction's version by exactly one.

The checks run in order against the reference server (`mfl-server`), the feedback sidecar in front of any
V2 server (`mfl-sidecar`), or anything else that claims the contract. They send one row and one label:
the row is built from the model's metadata (zeros of each input's datatype, the width of its shape or of
`parameters.features`), the label is the predicted value (a class the metadata lists when the prediction is
not one of them, e.g. a probability). Run it against a replica that takes no other labels meanwhile, or
the feedback counter moves by more than the one label sent. Standard library only, no cluster needed.

Which model: `--model`, else the only model of the V2 repository index (`POST /v2/repository/index`, as
MLServer and Triton serve it), else the `model` that `/readyz` names (mfl-server and mfl-sidecar). The
protocol itself has no model listing.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from feedbackloop.core.text import inert
from mfl_contracts import metrics as names

ID_OUTPUT = "mfl_prediction_id"
IDS_HEADER = "mfl-prediction-ids"
PREDICT_OUTPUT = "predict"
DEFAULT_TIMEOUT = 10.0
MAX_SHOWN = 200  # characters of a server's answer quoted in a failed check
ALWAYS = (names.PREDICTIONS, names.PREDICTION_LATENCY, names.FEEDBACK, names.HTTP_REQUESTS, names.FEEDBACK_REJECTED)
PER_TASK = {
    "classification": (names.FEEDBACK_CORRECT, names.FEEDBACK_INCORRECT, names.CONFUSION),
    "regression": (names.FEEDBACK_ABS_ERROR,),
}
ZERO = {"BOOL": False, "BYTES": ""}  # the value of one cell per datatype; numbers are 0


class Unreachable(Exception):
    """The server cannot be reached at all: one error line, no checks."""


@dataclass
class Check:
    name: str
    status: str  # ok | fail | skip
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "ok"


@dataclass
class Report:
    url: str
    model: str | None = None
    version: str | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "model": self.model,
            "version": self.version,
            "passed": self.passed,
            "checks": [asdict(check) for check in self.checks],
        }

    def text(self) -> str:
        width = max((len(check.name) for check in self.checks), default=0)
        lines = []
        for check in self.checks:
            word = {"ok": "ok", "fail": "FAIL", "skip": "SKIP"}[check.status]
            lines.append(inert(f"{word:<5} {check.name:<{width}}  {check.detail}".rstrip()))  # the server's words
        failed = sum(check.status == "fail" for check in self.checks)
        skipped = sum(check.status == "skip" for check in self.checks)
        target = f"model {self.model!r}" + (f" version {self.version}" if self.version else "") if self.model else ""
        if failed or skipped:
            lines.append(
                f"{failed} of {len(self.checks)} checks failed"
                + (f", {skipped} not checked" if skipped else "")
                + f": {self.url} does not meet the serving contract"
            )
        else:
            lines.append(f"all {len(self.checks)} checks passed: {self.url} ({target}) meets the serving contract")
        return "\n".join(lines) + "\n"


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def shown(self) -> str:
        text = self.body.decode("utf-8", "replace").strip().replace("\n", " ")
        return f"{self.status} {text[:MAX_SHOWN]}".rstrip()


class Client:
    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout

    def get(self, path: str) -> Answer:
        return self._send(urllib.request.Request(self.url + path, method="GET"))

    def post(self, path: str, body: Any) -> Answer:
        data = json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        return self._send(request)

    def _send(self, request: urllib.request.Request) -> Answer:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return Answer(response.status, response.read(), _headers(response.headers))
        except urllib.error.HTTPError as error:  # an answer, with a status >= 400
            return Answer(error.code, error.read() or b"", _headers(error.headers))
        except (urllib.error.URLError, OSError) as error:
            raise Unreachable(f"cannot reach {self.url}: {reason(error)}") from None


def _headers(headers: Any) -> dict[str, str]:
    return {key.lower(): value for key, value in (headers.items() if headers is not None else [])}


def reason(error: BaseException) -> str:
    cause = getattr(error, "reason", error)
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, (TimeoutError, socket.timeout)):
        return "no answer in time"
    if isinstance(cause, socket.gaierror):
        return f"cannot resolve the host ({cause.strerror or cause})"
    return str(cause or type(error).__name__).splitlines()[0][:MAX_SHOWN] if str(cause) else type(cause).__name__


def parse_duration(text: str) -> float:
    """'10s', '500ms', '1m', '1m30s' or plain seconds, as kubectl's --request-timeout takes them."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        parts = re.fullmatch(r"((?:\d+(?:\.\d+)?(?:ms|s|m|h))+)", value)
        if not parts:
            raise ValueError(f"invalid duration {text!r}: use e.g. 10s, 500ms, 1m") from None
        unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        seconds = sum(float(n) * unit[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value))
    if not 0 < seconds <= 3600:
        raise ValueError(f"invalid duration {text!r}: must be more than 0 and at most 1h")
    return seconds


def base_url(url: str) -> str:
    given = url.strip().rstrip("/")
    if "://" not in given:
        given = "http://" + given
    parts = urlsplit(given)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid URL {url!r}: expected the server's base URL like http://127.0.0.1:8080")
    return given


# --- the checks ---------------------------------------------------------------------------------


class Run:
    """The checks in order; a check that needs an earlier one's result is skipped when that one failed."""

    def __init__(self, client: Client, model: str | None) -> None:
        self.client = client
        self.report = Report(client.url, model)

    def ok(self, name: str, detail: str = "") -> None:
        self.report.checks.append(Check(name, "ok", detail))

    def fail(self, name: str, detail: str) -> None:
        self.report.checks.append(Check(name, "fail", detail))

    def skip(self, name: str, why: str) -> None:
        self.report.checks.append(Check(name, "skip", f"not checked: {why}"))

    def health(self, name: str, path: str, field_name: str) -> None:
        answer = self.client.get(path)
        if answer.status == 200:
            self.ok(name, f"GET {path}")
        else:
            self.fail(name, f"GET {path} answered {answer.shown()}, expected 200 {{{field_name!r}: true}}")

    def server_metadata(self) -> None:
        answer = self.client.get("/v2")
        body = answer.json()
        if answer.status != 200 or not isinstance(body, dict):
            self.fail("server metadata", f"GET /v2 answered {answer.shown()}, expected 200 with name and version")
            return
        missing = [key for key in ("name", "version") if not isinstance(body.get(key), str)]
        if missing:
            self.fail("server metadata", f"GET /v2 has no {' or '.join(missing)}")
            return
        self.ok("server metadata", f"{body['name']} {body['version']}")

    def find_model(self) -> str | None:
        if self.report.model:
            return self.report.model
        index = self.client.post("/v2/repository/index", {"ready": True})
        listed = index.json() if index.status == 200 else None
        if isinstance(listed, list):
            found = {
                item.get("name") for item in listed if isinstance(item, dict) and isinstance(item.get("name"), str)
            }
            if len(found) == 1:
                return found.pop()
        ready = self.client.get("/readyz").json()
        if isinstance(ready, dict) and isinstance(ready.get("model"), str):
            return str(ready["model"])
        return None

    def model_metadata(self, model: str) -> dict[str, Any] | None:
        path = f"/v2/models/{quote(model, safe='')}"
        answer = self.client.get(path)
        body = answer.json()
        name = "model metadata"
        if answer.status != 200 or not isinstance(body, dict):
            self.fail(name, f"GET {path} answered {answer.shown()}, expected 200 with the model's metadata")
            return None
        problems = []
        if body.get("name") != model:
            problems.append(f"name is {str(body.get('name'))[:60]!r}, not {model!r}")
        versions = body.get("versions")
        if isinstance(versions, list) and versions:
            self.report.version = str(versions[-1])
        if input_tensors(body) is None:
            problems.append("no input with a datatype and a [rows, columns] shape or parameters.features")
        outputs = [o.get("name") for o in body.get("outputs") or [] if isinstance(o, dict)]
        if ID_OUTPUT not in outputs:
            problems.append(f"outputs do not list {ID_OUTPUT!r} (listed: {', '.join(map(str, outputs)) or 'none'})")
        if problems:
            self.fail(name, f"GET {path}: " + "; ".join(problems))
            return body if input_tensors(body) is not None else None
        self.ok(name, f"version {self.report.version or '?'}, {describe_inputs(body)}")
        return body

    def model_ready(self, model: str) -> None:
        path = f"/v2/models/{quote(model, safe='')}/ready"
        answer = self.client.get(path)
        if answer.status == 200:
            self.ok("model ready", f"GET {path}")
        else:
            self.fail("model ready", f"GET {path} answered {answer.shown()}, expected 200")

    def infer(self, model: str, metadata: dict[str, Any]) -> tuple[str, Any] | None:
        """(the row's id, its prediction), or None when the answer has no usable id."""
        path = f"/v2/models/{quote(model, safe='')}/infer"
        request_id = f"mfl-conformance-{uuid.uuid4().hex[:12]}"
        answer = self.client.post(path, {"id": request_id, "inputs": input_tensors(metadata)})
        body = answer.json()
        if answer.status != 200 or not isinstance(body, dict):
            self.fail("infer", f"POST {path} with one row answered {answer.shown()}, expected 200")
            self.skip("prediction ids", "infer failed")
            return None
        outputs = {o.get("name"): o for o in body.get("outputs") or [] if isinstance(o, dict)}
        prediction = first_prediction(body)
        problems = []
        if prediction is None:
            problems.append("no prediction output with one value for the row")
        if body.get("model_name") not in (None, model):
            problems.append(f"model_name is {str(body.get('model_name'))[:60]!r}")
        if body.get("id") != request_id:
            problems.append(f"id is {str(body.get('id'))[:60]!r}, not the request's {request_id!r}")
        if problems:
            self.fail("infer", f"POST {path}: " + "; ".join(problems))
        else:
            self.ok("infer", f"POST {path}: predicted {prediction!r} for one row")
        version = body.get("model_version")
        if isinstance(version, str) and version:
            self.report.version = version
        ids = ids_of(outputs.get(ID_OUTPUT))
        header = answer.headers.get(IDS_HEADER)
        missing = []
        if ids is None:
            missing.append(f"no {ID_OUTPUT!r} output tensor with one id for the row")
        if header is None:
            missing.append(f"no {IDS_HEADER!r} response header")
        elif ids is not None and header.split(",") != ids:
            missing.append(f"the {IDS_HEADER!r} header {header[:60]!r} is not the tensor's ids")
        if missing:
            self.fail("prediction ids", "; ".join(missing))
        else:
            self.ok("prediction ids", f"{ID_OUTPUT} tensor and {IDS_HEADER} header: 1 id")
        if ids is None or prediction is None:
            return None
        return ids[0], prediction

    def feedback(self, model: str, label_entry: dict[str, Any]) -> bool:
        path = f"/v2/models/{quote(model, safe='')}/feedback"
        answer = self.client.post(path, {"feedback": [label_entry]})
        body = answer.json()
        if answer.status == 200 and isinstance(body, dict) and body.get("accepted") == 1 and not body.get("rejected"):
            self.ok("feedback", f"POST {path}: label {label_entry['label']!r} accepted")
            return True
        self.fail("feedback", f"POST {path} answered {answer.shown()}, expected 200 {{'accepted': 1, 'rejected': []}}")
        return False

    def duplicate(self, model: str, label_entry: dict[str, Any]) -> None:
        path = f"/v2/models/{quote(model, safe='')}/feedback"
        answer = self.client.post(path, {"feedback": [label_entry]})
        body = answer.json()
        rejected = body.get("rejected") if isinstance(body, dict) else None
        reasons = [r.get("reason") for r in rejected if isinstance(r, dict)] if isinstance(rejected, list) else []
        if isinstance(body, dict) and body.get("accepted") == 0 and "duplicate" in reasons and answer.status < 500:
            self.ok("duplicate label", f"the same label again: rejected as duplicate ({answer.status})")
        else:
            self.fail(
                "duplicate label",
                f"the same label again answered {answer.shown()}, expected accepted 0 and reason 'duplicate'",
            )

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]] | None:
        answer = self.client.get("/metrics")
        if answer.status != 200:
            return None
        return parse_metrics(answer.body.decode("utf-8", "replace"))


def run_checks(url: str, model: str | None, timeout: float) -> Report:
    """Every check against ``url``; raises Unreachable when the server does not answer at all."""
    run = Run(Client(url, timeout), model)
    run.health("live", "/v2/health/live", "live")  # the first request: Unreachable ends here
    try:
        _after_live(run)
    except Unreachable as error:  # it answered, then stopped: what was checked stays in the report
        run.fail("connection", str(error))
    return run.report


def _after_live(run: Run) -> None:
    run.health("ready", "/v2/health/ready", "ready")
    run.server_metadata()
    found = run.find_model()
    if found is None:
        run.fail("model", "the server names no model (not one in /v2/repository/index, none at /readyz): pass --model")
        return
    run.report.model = found
    metadata = run.model_metadata(found)
    run.model_ready(found)
    before = run.metrics()
    inferred = run.infer(found, metadata) if metadata is not None else None
    if metadata is None:
        for name in ("infer", "prediction ids"):
            run.skip(name, "no usable model metadata to build a row from")
    accepted = False
    if inferred is None:
        for name in ("feedback", "duplicate label"):
            run.skip(name, "no prediction id to label")
    else:
        row_id, prediction = inferred
        entry = {"id": row_id, "label": label_for(prediction, metadata or {})}
        accepted = run.feedback(found, entry)
        if accepted:
            run.duplicate(found, entry)
        else:
            run.skip("duplicate label", "the first label was not accepted")
    after = run.metrics()
    check_metrics(run, before, after, metadata or {}, accepted)


def check_metrics(
    run: Run,
    before: dict[str, list[tuple[dict[str, str], float]]] | None,
    after: dict[str, list[tuple[dict[str, str], float]]] | None,
    metadata: dict[str, Any],
    accepted: bool,
) -> None:
    if after is None:
        run.fail("metrics", "GET /metrics did not answer 200 with the Prometheus text format")
        run.skip("feedback counted once", "no metrics")
        return
    task = (metadata.get("parameters") or {}).get("task")
    if task not in PER_TASK:  # not in the metadata: the series a label left say which
        task = "regression" if names.FEEDBACK_ABS_ERROR in after and names.CONFUSION not in after else "classification"
    wanted = [*ALWAYS, *PER_TASK[task]] if accepted else list(ALWAYS[:4])
    missing = [name for name in wanted if name not in after]
    if missing:
        run.fail("metrics", f"GET /metrics has no {', '.join(missing)}")
    else:
        run.ok("metrics", f"{len(wanted)} mfl_* series ({task})")
    if not accepted:
        run.skip("feedback counted once", "no label was accepted")
        return
    version = run.report.version
    moved = total(after, names.FEEDBACK, version) - total(before or {}, names.FEEDBACK, version)
    duplicates = total(after, names.FEEDBACK_REJECTED, None, reason="duplicate") - total(
        before or {}, names.FEEDBACK_REJECTED, None, reason="duplicate"
    )
    where = f'{{version="{version}"}}' if version else ""
    if moved == 1:
        run.ok(
            "feedback counted once",
            f'{names.FEEDBACK}{where} +1, {names.FEEDBACK_REJECTED}{{reason="duplicate"}} +{duplicates:g}',
        )
    else:
        run.fail("feedback counted once", f"{names.FEEDBACK}{where} moved by {moved:g}, expected exactly 1")


def total(
    families: dict[str, list[tuple[dict[str, str], float]]], name: str, version: str | None, **labels: str
) -> float:
    return sum(
        value
        for sample_labels, value in families.get(name, [])
        if (version is None or sample_labels.get("version") == version)
        and all(sample_labels.get(k) == v for k, v in labels.items())
    )


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by family name (a counter's `_total`, a histogram's `_bucket`/`_sum`/`_count` kept under the
    name the contract uses: mfl_feedback_total, mfl_prediction_latency_seconds)."""
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        matched = SAMPLE.match(line)
        if not matched or line.startswith("#"):
            continue
        name, _, labels, raw = matched.groups()
        try:
            number = float(raw)
        except ValueError:
            continue
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and not name.endswith("_total"):
                families.setdefault(name.removesuffix(suffix), [])
        parsed = {key: value.replace('\\"', '"').replace("\\\\", "\\") for key, value in LABEL.findall(labels or "")}
        families.setdefault(name, []).append((parsed, number))
    return families


# --- building the row and the label -------------------------------------------------------------


def input_tensors(metadata: dict[str, Any]) -> list[dict[str, Any]] | None:
    """One row for the metadata's inputs: one [1, width] tensor, or one [1] tensor per named input."""
    inputs = [item for item in metadata.get("inputs") or [] if isinstance(item, dict)]
    features = (metadata.get("parameters") or {}).get("features")
    width_from_features = len(features) if isinstance(features, list) and features else None
    tensors = []
    for item in inputs:
        name, datatype, shape = item.get("name"), item.get("datatype", "FP64"), item.get("shape")
        if not isinstance(name, str) or not isinstance(shape, list) or not shape:
            return None
        width, tensor_shape = 1, [1]
        if len(shape) > 1:
            given = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else width_from_features
            if given is None:
                return None
            width, tensor_shape = given, [1, given]
        zero = ZERO.get(str(datatype), 0.0 if str(datatype).startswith("FP") else 0)
        tensors.append({"name": name, "datatype": datatype, "shape": tensor_shape, "data": [zero] * width})
    if not tensors and width_from_features:
        tensors = [
            {
                "name": "input-0",
                "datatype": "FP64",
                "shape": [1, width_from_features],
                "data": [0.0] * width_from_features,
            }
        ]
    return tensors or None


def describe_inputs(metadata: dict[str, Any]) -> str:
    tensors = input_tensors(metadata) or []
    return ", ".join(f"input {t['name']} {t['datatype']} [-1, {len(t['data'])}]" for t in tensors)


def first_prediction(body: dict[str, Any]) -> Any:
    outputs = [o for o in body.get("outputs") or [] if isinstance(o, dict) and o.get("name") != ID_OUTPUT]
    chosen = next((o for o in outputs if o.get("name") == PREDICT_OUTPUT), outputs[0] if outputs else None)
    if chosen is None or not isinstance(chosen.get("data"), list) or not chosen["data"]:
        return None
    value = chosen["data"][0]
    while isinstance(value, list) and value:
        value = value[0]
    return None if isinstance(value, (list, dict)) else value


def ids_of(tensor: Any) -> list[str] | None:
    if not isinstance(tensor, dict) or not isinstance(tensor.get("data"), list):
        return None
    data = tensor["data"]
    flat = [v for row in data for v in row] if data and isinstance(data[0], list) else data
    if len(flat) != 1 or not all(isinstance(v, str) and v for v in flat):
        return None
    return flat


def label_for(prediction: Any, metadata: dict[str, Any]) -> Any:
    """The predicted value (always a valid label), or a class the metadata lists when it is not one."""
    classes = (metadata.get("parameters") or {}).get("classes")
    if isinstance(classes, list) and classes:
        for cls in classes:
            if cls == prediction or str(cls) == str(prediction):
                return cls
        return classes[0]
    if isinstance(prediction, float) and prediction.is_integer():
        return int(prediction)
    return prediction


# --- the command --------------------------------------------------------------------------------


def command(args: Any) -> int:
    """`mfl conformance`: prints one line per check (or the JSON report); 1 when any check fails."""
    from mfl_cli.kube import CliError

    try:
        url = base_url(args.url)
        timeout = parse_duration(args.timeout) if args.timeout else DEFAULT_TIMEOUT
    except ValueError as error:
        raise CliError(str(error)) from None
    try:
        report = run_checks(url, args.model, timeout)
    except Unreachable as error:
        raise CliError(str(error)) from None
    if args.output == "json":
        sys.stdout.write(json.dumps(report.as_json(), indent=2) + "\n")
    else:
        sys.stdout.write(report.text())
    return 0 if report.passed else 1
