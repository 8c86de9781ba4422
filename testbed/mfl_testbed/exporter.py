"""An in-process /metrics endpoint whose series a test sets, changes and removes at will."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mfl_testbed.netutil import LOOPBACK

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


class TestExporter:
    """Serves gauges in the Prometheus text format on a free loopback port.

    Any label set may be used per series (unlike prometheus_client, label names are not fixed
    per metric). `clear()` removes series so that Prometheus sees "no data".
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, host: str = LOOPBACK) -> None:
        self.host = host
        self._series: dict[SeriesKey, float] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.scrapes = 0

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> TestExporter:
        if self._server is None:
            self._server = ThreadingHTTPServer((self.host, 0), self._handler_class())
            self._server.daemon_threads = True
            self._thread = threading.Thread(target=self._server.serve_forever, name="test-exporter", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> TestExporter:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the exporter is not started")
        return self._server.server_address[1]

    @property
    def address(self) -> str:
        """`host:port`, as a Prometheus target."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    # ---- series ----------------------------------------------------------------------------

    def set(self, name: str, value: float, **labels: Any) -> None:
        """Set the series `name{labels}` to `value`: `set("model_accuracy", 0.93, model="churn")`."""
        key = _series_key(name, labels)
        with self._lock:
            self._series[key] = float(value)

    def inc(self, name: str, amount: float = 1.0, **labels: Any) -> None:
        """Add `amount` to a series (starting at 0), to emulate a counter."""
        key = _series_key(name, labels)
        with self._lock:
            self._series[key] = self._series.get(key, 0.0) + amount

    def clear(self, name: str, **labels: Any) -> None:
        """Remove the series of `name` whose labels include `labels` (all of them if none given)."""
        wanted = {key: str(value) for key, value in labels.items()}
        with self._lock:
            for key in [key for key in self._series if _matches(key, name, wanted)]:
                del self._series[key]

    def clear_all(self) -> None:
        with self._lock:
            self._series.clear()

    def render(self) -> str:
        """The exposition text of all current series."""
        with self._lock:
            series = sorted(self._series.items())
        lines: list[str] = []
        previous_name = None
        for (name, labels), value in series:
            if name != previous_name:
                lines.append(f"# TYPE {name} gauge")
                previous_name = name
            lines.append(f"{name}{_format_labels(labels)} {_format_value(value)}")
        return "\n".join(lines) + "\n"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        exporter = self

        class MetricsHandler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                exporter.scrapes += 1
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass  # one line per scrape would drown the test output

        return MetricsHandler


def _series_key(name: str, labels: dict[str, Any]) -> SeriesKey:
    if not METRIC_NAME.match(name):
        raise ValueError(f"invalid metric name {name!r}")
    for label in labels:
        if not LABEL_NAME.match(label) or label.startswith("__"):
            raise ValueError(f"invalid label name {label!r}")
    return name, tuple(sorted((key, str(value)) for key, value in labels.items()))


def _matches(key: SeriesKey, name: str, wanted: dict[str, str]) -> bool:
    series_name, labels = key
    return series_name == name and wanted.items() <= dict(labels).items()


def _format_labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    escaped = ((key, value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')) for key, value in labels)
    return "{" + ",".join(f'{key}="{value}"' for key, value in escaped) + "}"


def _format_value(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
