"""The egress policy at connect time (runtime/egress_net.py), through the operator's own code paths: webhooks
(notify.post_once, the Notifier), confirmPromotion and Prometheus (PrometheusClients, FleetPoller).

The target is a real HTTP server on 127.0.0.1 that must receive NOTHING unless the admin allows it. Names are
answered by a fake resolver at the socket level (the same one aiohttp's and urllib3's lookups use), which can
answer a public address first and 127.0.0.1 after (DNS rebinding): only the address the connection uses counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from feedbackloop.core.api import MetricRule, Webhook
from feedbackloop.core.egress import EgressPolicy
from feedbackloop.core.phases import Event
from feedbackloop.core.settings import egress_allowance
from feedbackloop.runtime import egress_net, notify
from feedbackloop.runtime.egress_net import EgressRefused
from feedbackloop.runtime.poller import EndpointKey, FleetPoller, LoopQuery, PrometheusClients

PUBLIC = "93.184.216.34"
LOOP = {"metadata": {"namespace": "team-a", "name": "churn", "uid": "uid-1"}}
VECTOR = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "0.75"]}]}}


def allowing(text: str) -> EgressPolicy:
    return EgressPolicy(allow=egress_allowance(text, "MFL_EGRESS_ALLOW"))


class Server:
    """HTTP(S) on 127.0.0.1: answers every POST 200 and /api/v1/query with one sample; records every request
    and, with TLS, the name the client asked for (SNI)."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.requests: list[tuple[str, str]] = []
        self.server_names: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests.append(("POST", self.path))
                self.reply(b"")

            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(("GET", self.path))
                self.reply(json.dumps(VECTOR).encode())

            def reply(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            context.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.close()


class FakeDNS:
    """socket.getaddrinfo for the names given: each lookup takes the next answer (the last one repeats)."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.answers: dict[str, list[str]] = {}
        self.lookups: list[str] = []

    def __call__(self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:  # noqa: A002
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in self.answers:
            return self.real(host, port, family, type, proto, flags)
        self.lookups.append(name)
        answers = self.answers[name]
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port or 0)))]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


def post(url: str) -> int:
    return asyncio.run(notify.post_once(url, b"{}", {"Content-Type": "application/json"}, 3.0))


# --- webhooks -------------------------------------------------------------------------------------------------


def test_a_webhook_name_resolving_public_then_loopback_reaches_nothing(server: Server, dns: FakeDNS) -> None:
    """DNS rebinding: the name is public when it is looked at, 127.0.0.1 when the operator connects."""
    url = f"http://receiver.team-a.svc:{server.port}/hook"
    Webhook(url=url)  # the spec accepts it: an in-cluster name
    dns.answers["receiver.team-a.svc"] = [PUBLIC, "127.0.0.1"]
    assert socket.getaddrinfo("receiver.team-a.svc", server.port)[0][4][0] == PUBLIC  # what a check would see
    with pytest.raises(EgressRefused) as refused:
        post(url)
    assert server.requests == []
    assert str(refused.value) == (
        "not connected: 127.0.0.1 is loopback; if it is meant, ask the operator's admin to add it to MFL_EGRESS_ALLOW"
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[64:ff9b::7f00:1]"])
def test_a_webhook_at_a_literal_loopback_address_in_any_form_reaches_nothing(server: Server, host: str) -> None:
    """aiohttp never hands an IP literal to a resolver: the connector checks it too."""
    with pytest.raises(EgressRefused, match="is loopback"):
        post(f"http://{host}:{server.port}/hook")
    assert server.requests == []


def test_the_notifier_delivers_nothing_to_a_refused_receiver_and_says_why(
    server: Server, dns: FakeDNS, caplog: pytest.LogCaptureFixture
) -> None:
    dns.answers["receiver.team-a.svc"] = ["127.0.0.1"]
    url = f"http://receiver.team-a.svc:{server.port}/hook"

    async def scenario() -> None:
        notifier = notify.Notifier(sleep=lambda _seconds: asyncio.sleep(0.01), timeout=2.0)
        notifier.publish(LOOP, [Webhook(url=url)], Event("Warning", "BreachStarted", "accuracy 0.6"), {})
        task = asyncio.create_task(notifier.run())
        await asyncio.sleep(0.5)  # several tries
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.INFO, logger="feedbackloop.runtime.notify"):
        asyncio.run(scenario())
    assert server.requests == []
    assert "receiver.team-a.svc" in caplog.text and "127.0.0.1 is loopback" in caplog.text
    assert "MFL_EGRESS_ALLOW" in caplog.text


def test_the_admin_allows_a_receiver_by_address(server: Server, dns: FakeDNS) -> None:
    dns.answers["receiver.team-a.svc"] = ["127.0.0.1"]
    with egress_net.installed(allowing("127.0.0.1/32")):
        assert post(f"http://receiver.team-a.svc:{server.port}/hook") == 200
        assert post(f"http://127.0.0.1:{server.port}/hook") == 200
    assert server.requests == [("POST", "/hook"), ("POST", "/hook")]
    with pytest.raises(EgressRefused):  # the admin's allowance ends with its block; the default is back
        post(f"http://127.0.0.1:{server.port}/hook")
    assert len(server.requests) == 2


def test_a_name_the_admin_allows_may_not_resolve_to_loopback(server: Server, dns: FakeDNS) -> None:
    dns.answers["receiver.team-a.svc"] = ["127.0.0.1"]
    with egress_net.installed(allowing("receiver.team-a.svc")), pytest.raises(EgressRefused):
        post(f"http://receiver.team-a.svc:{server.port}/hook")
    assert server.requests == []


def test_a_name_with_an_allowed_address_among_refused_ones_connects_to_the_allowed_one_only() -> None:
    addresses = [ip_address(a) for a in ("127.0.0.1", PUBLIC, "169.254.169.254", PUBLIC)]
    assert egress_net.checked("receiver", "h.example", addresses) == [ip_address(PUBLIC)]


# --- confirmPromotion -----------------------------------------------------------------------------------------


def test_confirm_promotion_is_no_oracle_of_internal_endpoints(
    server: Server, dns: FakeDNS, caplog: pytest.LogCaptureFixture
) -> None:
    """An internal endpoint that would answer 200 is never asked: no yes/no about what lives inside."""
    dns.answers["approvals.ops.svc"] = [PUBLIC, "127.0.0.1"]
    socket.getaddrinfo("approvals.ops.svc", 80)  # public, at a look before the connection
    url = f"http://approvals.ops.svc:{server.port}/confirm"
    with (
        caplog.at_level(logging.WARNING, logger="feedbackloop.runtime.notify"),
        pytest.raises(egress_net.EgressRefused),  # the observer shows it in the loop's status
    ):
        asyncio.run(notify.confirm_promotion(url, {"version": 2}, timeout=3.0))
    assert server.requests == []
    assert f"confirm-promotion webhook {url}: not connected: 127.0.0.1 is loopback" in caplog.text
    assert "MFL_EGRESS_ALLOW" in caplog.text
    with egress_net.installed(allowing("127.0.0.0/8")):
        assert asyncio.run(notify.confirm_promotion(url, {"version": 2}, timeout=3.0)) is True
    assert server.requests == [("POST", "/confirm")]


# --- Prometheus -----------------------------------------------------------------------------------------------


def endpoint(url: str, ca_file: str | None = None) -> EndpointKey:
    return EndpointKey(url, None, ca_file, False, 3.0)


RULE = MetricRule.model_validate({"name": "accuracy", "min": 0.5, "query": 'avg(acc{model="{{model}}"})'})


def test_a_prometheus_resolving_to_loopback_is_a_no_data_sample_naming_the_url_and_the_setting(
    server: Server, dns: FakeDNS
) -> None:
    dns.answers["prometheus.monitoring.svc"] = [PUBLIC, "127.0.0.1"]
    socket.getaddrinfo("prometheus.monitoring.svc", 9090)  # public, at a look before the connection
    url = f"http://prometheus.monitoring.svc:{server.port}"
    query = LoopQuery("team-a/churn", endpoint(url), {"model": "churn"}, [RULE])
    samples, stats = asyncio.run(FleetPoller(PrometheusClients().query).poll([query], now=100.0))
    sample = samples["team-a/churn"]["accuracy"]
    assert server.requests == []
    assert sample.value is None and stats.errors == 1
    assert sample.error == (
        f"query to {url} failed: EgressRefused: not connected: 127.0.0.1 is loopback; if it is meant, ask the "
        "operator's admin to add it to MFL_EGRESS_ALLOW"
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"])
def test_a_prometheus_at_a_literal_loopback_address_is_refused(server: Server, host: str) -> None:
    with pytest.raises(EgressRefused, match="is loopback"):
        PrometheusClients().query(endpoint(f"http://{host}:{server.port}"), "up")
    assert server.requests == []


def test_a_prometheus_at_the_metadata_address_is_refused() -> None:
    with pytest.raises(EgressRefused, match="169.254.169.254 is cloud metadata"):
        PrometheusClients().query(endpoint("http://169.254.169.254/latest/meta-data"), "up")


def test_the_admin_allows_a_prometheus_and_environment_proxies_are_not_used(
    server: Server, dns: FakeDNS, monkeypatch: pytest.MonkeyPatch
) -> None:
    dns.answers["prometheus.monitoring.svc"] = ["127.0.0.1"]
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a proxy would connect where no check can see
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    with egress_net.installed(allowing("127.0.0.0/8")):
        result = PrometheusClients().query(endpoint(f"http://prometheus.monitoring.svc:{server.port}"), "up")
    assert result == [({}, 0.75)]
    assert server.requests == [("GET", "/api/v1/query?query=up")]


def certificate(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_to_a_name_is_checked_by_address_and_still_verifies_the_name(tmp_path: Path, dns: FakeDNS) -> None:
    """The connection goes to the checked IP address; TLS still sends the URL's name (SNI) and verifies the
    certificate against it."""
    good, wrong = certificate(tmp_path, "prometheus.example"), certificate(tmp_path, "other.example")
    dns.answers["prometheus.example"] = ["127.0.0.1"]
    secure, impostor = Server(tls=good), Server(tls=wrong)
    try:
        with pytest.raises(EgressRefused):  # by default: 127.0.0.1 is refused, TLS or not
            PrometheusClients().query(endpoint(f"https://prometheus.example:{secure.port}", str(good[0])), "up")
        assert secure.requests == []
        with egress_net.installed(allowing("127.0.0.1")):
            url = f"https://prometheus.example:{secure.port}"
            assert PrometheusClients().query(endpoint(url, str(good[0])), "up") == [({}, 0.75)]
            assert secure.server_names == ["prometheus.example"]
            # A certificate for another name, even one the client trusts, is refused: the name is verified.
            with pytest.raises(Exception, match="certificate verify failed"):
                PrometheusClients().query(endpoint(f"https://prometheus.example:{impostor.port}", str(wrong[0])), "up")
            # And one that is not trusted at all.
            with pytest.raises(Exception, match="certificate verify failed"):
                PrometheusClients().query(endpoint(f"https://prometheus.example:{impostor.port}", str(good[0])), "up")
        assert impostor.requests == []
    finally:
        secure.close()
        impostor.close()


# --- the operator's policy ------------------------------------------------------------------------------------


def test_the_operator_refuses_the_api_server_by_its_service_address_and_its_client_host() -> None:
    policy = egress_net.operator_policy(
        allow=egress_allowance("", "MFL_EGRESS_ALLOW"),
        env={"KUBERNETES_SERVICE_HOST": "10.96.0.1"},
        api_urls=["https://192.168.49.2:8443"],
    )
    assert {str(a) for a in policy.api_server} == {"10.96.0.1", "192.168.49.2"}
    for kind in ("prometheus", "receiver"):
        with pytest.raises(EgressRefused, match="the Kubernetes API server"):
            egress_net.checked(kind, "kubernetes.default.svc", [ip_address("10.96.0.1")], policy)
        with pytest.raises(EgressRefused, match="the Kubernetes API server"):
            egress_net.checked(kind, "p.example", [ip_address("::ffff:192.168.49.2")], policy)
