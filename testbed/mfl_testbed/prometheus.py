"""A real Prometheus (Debian's 2.42 binary) on a free loopback port, with targets set at run time.

Debian builds Prometheus without `kubernetes_sd_configs`, so targets come from
- a `file_sd_configs` job (`add_target` / `remove_target`), and
- `http_sd_configs` jobs (`http_sd_urls` or `add_http_sd`), such as the test bed's Pod discovery (`pod_discovery`).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mfl_testbed.netutil import LOOPBACK, free_port, http_request, wait_until
from mfl_testbed.process import ManagedProcess, TestbedError, TestbedUnavailable

FILE_SD_JOB = "testbed"
# Lets an http_sd endpoint mimic kubernetes_sd: these meta labels become the usual target labels.
KUBERNETES_META_LABELS = {
    "__meta_kubernetes_namespace": "namespace",
    "__meta_kubernetes_pod_name": "pod",
    "__meta_kubernetes_pod_container_name": "container",
    "__meta_kubernetes_pod_node_name": "node",
}


class PrometheusError(TestbedError):
    """The Prometheus HTTP API answered with an error."""


class Prometheus:
    """Prometheus with a 1 s scrape and evaluation interval; its data lives in `workdir`.

    Targets of the file_sd job keep the labels the exporter exposes (honor_labels), so a test
    exporter can emit `namespace` itself. Plain labels of http_sd targets (e.g. namespace, pod)
    pass through as-is; `__meta_kubernetes_*` ones are mapped as listed in KUBERNETES_META_LABELS.
    """

    def __init__(
        self,
        workdir: Path,
        scrape_interval: str = "1s",
        http_sd_urls: Sequence[str] = (),
        extra_scrape_configs: Sequence[Mapping[str, Any]] = (),
        host: str = LOOPBACK,
    ) -> None:
        """`host`: the address it listens on (a node's IP, so that Pods such as the operator reach it)."""
        self.workdir = Path(workdir)
        self.host = host
        self.scrape_interval = scrape_interval
        self.port = 0
        self.startup_seconds: float | None = None
        self.config_path = self.workdir / "prometheus.yml"
        self.targets_path = self.workdir / "file_sd" / "targets.json"
        self.log_path = self.workdir / "logs" / "prometheus.log"
        self._http_sd_urls = list(http_sd_urls)
        self._extra_scrape_configs = [dict(config) for config in extra_scrape_configs]
        self._rule_files: list[Path] = []
        self._targets: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._process: ManagedProcess | None = None
        # Called with the process id after every start: a restart by a test is a new process, which the test
        # bed's state file must know so that `mfl testbed down` stops it too (Cluster sets it).
        self.on_start: Callable[[int], None] | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Prometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise TestbedUnavailable("prometheus not found: `apt-get install prometheus`")
        started = time.monotonic()
        self.port = self.port or free_port(self.host)  # a restart keeps its address (and its TSDB)
        self._write_targets()
        self._write_config()
        self._process = ManagedProcess("prometheus", self._command(binary), self.log_path)
        atexit.register(self.stop)
        self._process.start()
        if self.on_start is not None and self._process.pid is not None:
            self.on_start(self._process.pid)
        try:
            wait_until(self._ready, timeout, "prometheus to become ready", on_poll=self._process.check_running)
        except BaseException as error:
            log = self._process.tail()
            self.stop()
            if isinstance(error, TimeoutError):
                raise TestbedError(f"{error}; last lines of its log:\n{log}") from error
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop Prometheus; safe to call more than once."""
        if self._process is not None:
            self._process.stop()
            self._process = None
        atexit.unregister(self.stop)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def detach(self) -> None:
        """Leave Prometheus running when this process exits (`mfl demo --keep`)."""
        atexit.unregister(self.stop)
        self._process = None

    def log_tail(self, lines: int = 40) -> str:
        return self._process.tail(lines) if self._process else ""

    # ---- targets ---------------------------------------------------------------------------

    def add_target(self, address: str, labels: Mapping[str, str] | None = None) -> None:
        """Scrape `address` (host:port) in the file_sd job, with extra target `labels`.

        Label `__metrics_path__` overrides the default `/metrics`.
        """
        with self._lock:
            self._targets[address] = dict(labels or {})
            self._write_targets()

    def remove_target(self, address: str) -> None:
        """Stop scraping `address`; its series go stale (absent) once Prometheus applies it.

        Prometheus applies discovered target changes every 5 s (fixed in 2.42), so adding or
        removing a target takes effect within about 5 s; series a target stops exposing go
        stale at its next scrape.
        """
        with self._lock:
            self._targets.pop(address, None)
            self._write_targets()

    def add_http_sd(self, url: str) -> None:
        """Add an http_sd job at run time (config rewrite + reload)."""
        with self._lock:
            if url not in self._http_sd_urls:
                self._http_sd_urls.append(url)
            self._write_config()
        if self._process is not None:
            self.reload()

    # ---- rules -----------------------------------------------------------------------------

    def add_rules(self, name: str, rules: Mapping[str, Any]) -> Path:
        """Load a Prometheus rules file (`{"groups": [...]}`) at run time, as `<workdir>/rules/<name>.yml`.

        Written, then a reload: a file Prometheus refuses fails the reload (PrometheusError), and the
        rules it had before stay loaded.
        """
        path = self.workdir / "rules" / f"{name}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, yaml.safe_dump(dict(rules), sort_keys=False))
        with self._lock:
            if path not in self._rule_files:
                self._rule_files.append(path)
            self._write_config()
        if self._process is not None:
            self.reload()
        return path

    def remove_rules(self, name: str) -> None:
        path = self.workdir / "rules" / f"{name}.yml"
        with self._lock:
            if path in self._rule_files:
                self._rule_files.remove(path)
            self._write_config()
        if self._process is not None:
            self.reload()
        path.unlink(missing_ok=True)

    def rule_groups(self) -> list[dict[str, Any]]:
        """Loaded rule groups with each rule's `health` and `lastError` (`/api/v1/rules`)."""
        return self._api("rules")["groups"]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts, pending or firing: `labels`, `annotations`, `state`, `value` (`/api/v1/alerts`)."""
        return self._api("alerts")["alerts"]

    def reload(self) -> None:
        status, body = http_request(f"{self.url}/-/reload", method="POST", timeout=30.0)
        if status != 200:
            raise PrometheusError(f"reload failed: HTTP {status}: {body.decode(errors='replace')}")

    def active_targets(self) -> list[dict[str, Any]]:
        """Targets as Prometheus sees them (`labels`, `health`, `lastError`, `scrapeUrl`...)."""
        return self._api("targets", state="active")["activeTargets"]

    # ---- queries ---------------------------------------------------------------------------

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """The result of an instant query: for vectors `[{"metric": {...}, "value": [ts, "v"]}]`."""
        params = {"query": promql, **({"time": str(at)} if at is not None else {})}
        return self._api("query", **params)["result"]

    def query_values(self, promql: str) -> list[float]:
        """The sample values of an instant vector query, in the API's order."""
        return [float(sample["value"][1]) for sample in self.query(promql)]

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30.0,
        interval: float = 0.5,
    ) -> list[dict[str, Any]]:
        """Poll `promql` until `predicate(result)` holds and return that result.

        The default predicate waits for a non-empty result; `lambda r: r == []` waits for absence.
        """
        last: list[Any] = []

        def satisfied() -> bool:
            nonlocal last
            last = self.query(promql)
            return predicate(last)

        try:
            wait_until(satisfied, timeout, f"`{promql}`", interval, on_poll=self._check_running)
        except TimeoutError as error:
            raise TimeoutError(f"{error}; last result: {json.dumps(last)[:1000]}") from error
        return last

    # ---- internals -------------------------------------------------------------------------

    def _command(self, binary: str) -> list[str]:
        return [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address={self.host}:{self.port}",
            "--web.enable-lifecycle",
        ]

    def _config(self) -> dict[str, Any]:
        scrape_configs = [
            {
                "job_name": FILE_SD_JOB,
                "honor_labels": True,
                "file_sd_configs": [{"files": [str(self.targets_path)], "refresh_interval": "1s"}],
            },
            *(self._http_sd_job(index, url) for index, url in enumerate(self._http_sd_urls)),
            *self._extra_scrape_configs,
        ]
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                # The default timeout (10s) must not exceed the interval.
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": "1s",
            },
            "scrape_configs": scrape_configs,
        }
        if self._rule_files:
            config["rule_files"] = [str(path) for path in self._rule_files]
        return config

    @staticmethod
    def _http_sd_job(index: int, url: str) -> dict[str, Any]:
        relabel = [
            {"source_labels": [meta], "regex": "(.+)", "target_label": label, "replacement": "$1"}
            for meta, label in KUBERNETES_META_LABELS.items()
        ]
        relabel.append({"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"})
        return {
            "job_name": f"http-sd-{index}",
            "http_sd_configs": [{"url": url, "refresh_interval": "2s"}],
            "relabel_configs": relabel,
        }

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.config_path, yaml.safe_dump(self._config(), sort_keys=False))

    def _write_targets(self) -> None:
        groups = [{"targets": [address], "labels": labels} for address, labels in self._targets.items()]
        self.targets_path.parent.mkdir(parents=True, exist_ok=True)
        # Prometheus watches the file: a rename means it never reads half a document.
        _write_atomically(self.targets_path, json.dumps(groups, indent=1))

    def _ready(self) -> bool:
        status, _ = http_request(f"{self.url}/-/ready", timeout=2.0)
        return status == 200

    def _check_running(self) -> None:
        if self._process is None:
            raise PrometheusError("prometheus is not running")
        self._process.check_running()

    def _api(self, endpoint: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        status, body = http_request(url, timeout=10.0)
        try:
            reply = json.loads(body)
        except ValueError:
            raise PrometheusError(f"{endpoint} {params}: HTTP {status}: {body[:300]!r}") from None
        if reply.get("status") != "success":
            raise PrometheusError(f"{endpoint} {params}: {reply.get('error', reply)}")
        return reply["data"]


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
