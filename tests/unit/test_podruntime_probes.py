import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from feedbackloop.localdev.podruntime_probes import ProbeTracker, container_ports, resolve_port, run_probe


def test_readiness_starts_unknown_and_needs_success_threshold_successes():
    tracker = ProbeTracker("readiness", {"initialDelaySeconds": 5, "periodSeconds": 2, "successThreshold": 2}, 100.0)
    assert not tracker.passing and not tracker.failed
    assert not tracker.due(104.9) and tracker.due(105.0)
    assert not tracker.record(True, 105.0)
    assert tracker.next_due == 107.0
    assert tracker.record(True, 107.0) and tracker.passing


def test_readiness_fails_after_failure_threshold_consecutive_failures():
    tracker = ProbeTracker("readiness", {"failureThreshold": 2}, 0.0)
    tracker.record(True, 0.0)
    tracker.record(False, 10.0)
    assert tracker.passing  # one failure is not enough
    tracker.record(True, 20.0)
    tracker.record(False, 30.0)
    assert tracker.passing  # the streak was broken
    assert tracker.record(False, 40.0) and tracker.failed


def test_liveness_starts_passing_and_fails_after_the_threshold():
    tracker = ProbeTracker("liveness", {"failureThreshold": 3, "periodSeconds": 1}, 0.0)
    assert tracker.passing
    for moment in (0.0, 1.0):
        tracker.record(False, moment)
        assert not tracker.failed
    tracker.record(False, 2.0)
    assert tracker.failed


def test_startup_probe_starts_unknown():
    tracker = ProbeTracker("startup", {}, 0.0)
    assert not tracker.passing
    tracker.record(True, 0.0)
    assert tracker.passing


def test_ports_resolve_by_number_or_name():
    named = container_ports({"ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9000}]})
    assert named == {"http": 8080}
    assert resolve_port("http", named) == 8080 and resolve_port(81, named) == 81 and resolve_port("82", named) == 82
    with pytest.raises(ValueError):
        resolve_port("metrics", named)


@pytest.fixture
def server():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/ok" else 500)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def no_exec(argv, timeout):
    raise AssertionError("not an exec probe")


def test_http_probe_success_failure_and_refused(server):
    assert run_probe({"httpGet": {"path": "/ok", "port": "web"}}, "127.0.0.1", {"web": server}, 1.0, no_exec) == (True, "")
    ok, message = run_probe({"httpGet": {"path": "/bad", "port": server}}, "127.0.0.1", {}, 1.0, no_exec)
    assert not ok and "500" in message
    ok, message = run_probe({"httpGet": {"path": "/", "port": "nope"}}, "127.0.0.1", {}, 1.0, no_exec)
    assert not ok and "nope" in message


def test_tcp_probe(server):
    assert run_probe({"tcpSocket": {"port": server}}, "127.0.0.1", {}, 1.0, no_exec)[0]


def test_exec_probe_is_delegated():
    calls = []
    result = run_probe({"exec": {"command": ["true"]}}, "ip", {}, 3.0,
                       lambda argv, timeout: calls.append((argv, timeout)) or (True, ""))
    assert result == (True, "") and calls == [(["true"], 3.0)]
