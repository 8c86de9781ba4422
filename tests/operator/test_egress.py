"""The egress policy (core/egress.py), as data: which addresses a tenant's URL may lead the operator to, for a
Prometheus and for a receiver (webhook, confirmPromotion), with and without the admin's MFL_EGRESS_ALLOW; and
the spec refusing the literal special addresses of receivers in every spelling (core/api.py receiver_url)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from pydantic import ValidationError

from feedbackloop.core import egress
from feedbackloop.core.api import describe_validation_error, validate_spec
from feedbackloop.core.egress import EgressPolicy
from feedbackloop.core.settings import egress_allowance

API = ipaddress.ip_address("10.96.0.1")
POLICY = EgressPolicy(api_server=frozenset({API}))


def allowing(text: str) -> EgressPolicy:
    return EgressPolicy(allow=egress_allowance(text, "MFL_EGRESS_ALLOW"), api_server=frozenset({API}))


def refusal(kind: egress.Kind, address: str, policy: EgressPolicy = POLICY, host: str = "h.example") -> str | None:
    return egress.refusal(kind, host, ipaddress.ip_address(address), policy)


# Refused for every kind of URL, with what the message calls it.
ALWAYS = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("::1", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.170.2", "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("168.63.129.16", "cloud metadata"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast or reserved"),
    ("240.0.0.1", "broadcast or reserved"),
    ("192.0.2.1", "broadcast or reserved"),
    ("198.18.0.1", "broadcast or reserved"),
    ("2001:db8::1", "broadcast or reserved"),
    # IPv4-mapped and NAT64: judged as the IPv4 address they carry
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:7f00:1", "loopback"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("::ffff:a9fe:a9fe", "cloud metadata"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("64:ff9b::7f00:1", "loopback"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata"),
    # the forms that reach an IPv4 host through a relay, or deprecated: refused whatever they carry
    ("::7f00:1", "IPv4-compatible"),
    ("::808:808", "IPv4-compatible"),
    ("2002:7f00:1::1", "6to4"),
    ("2002:808:808::1", "6to4"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("::ffff:0:808:808", "IPv4-translated"),
    ("64:ff9b:1::808:808", "local-use NAT64"),
    # the Kubernetes API server's own addresses (its Service's ClusterIP, here), in any form
    ("10.96.0.1", "the Kubernetes API server"),
    ("::ffff:10.96.0.1", "the Kubernetes API server"),
]


@pytest.mark.parametrize("kind", ["prometheus", "receiver"])
@pytest.mark.parametrize(("address", "what"), ALWAYS)
def test_special_addresses_are_refused_for_every_kind(kind: egress.Kind, address: str, what: str) -> None:
    assert what in (refusal(kind, address) or "")


INTERNAL = [
    "10.0.0.5",
    "172.16.3.4",
    "192.168.1.1",
    "100.64.0.1",
    "fd12:3456::1",
    "::ffff:10.1.2.3",
    "64:ff9b::a01:203",
]


@pytest.mark.parametrize("address", INTERNAL)
def test_private_addresses_are_refused_to_receivers_and_allowed_to_prometheus(address: str) -> None:
    assert refusal("receiver", address)  # every in-cluster Service is one: no probe of the cluster
    assert refusal("prometheus", address) is None  # nearly always in-cluster


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.216.34", "2606:4700::6810:85e5", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal("receiver", address) is None and refusal("prometheus", address) is None


def test_the_admin_allows_addresses_by_cidr_in_any_form_they_take() -> None:
    policy = allowing("127.0.0.1/32, 10.0.0.0/8 fd00:ec2::254")
    for address in ("127.0.0.1", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "10.9.9.9", "10.96.0.1", "fd00:ec2::254"):
        assert refusal("receiver", address, policy) is None, address
    assert refusal("receiver", "127.0.0.2", policy) == "loopback"  # exactly what is allowed, nothing more
    assert refusal("receiver", "192.168.0.1", policy)


def test_an_allowed_name_lifts_the_private_refusal_only() -> None:
    """An in-cluster receiver allowed by its Service name; what that name resolves to may still not be
    loopback, metadata or the API server (a name is only as trustworthy as the DNS answering it)."""
    policy = allowing("hooks.team-a.svc.cluster.local *.approvals.svc")
    assert refusal("receiver", "10.0.0.7", policy, host="hooks.team-a.svc.cluster.local") is None
    assert refusal("receiver", "10.0.0.7", policy, host="x.approvals.svc.") is None
    assert refusal("receiver", "10.0.0.7", policy, host="other.team-a.svc.cluster.local")
    for address in ("127.0.0.1", "169.254.169.254", "10.96.0.1", "::ffff:127.0.0.1"):
        assert refusal("receiver", address, policy, host="hooks.team-a.svc.cluster.local"), address


def test_the_message_names_the_address_what_it_is_and_the_setting() -> None:
    address = ipaddress.ip_address("::ffff:a9fe:a9fe")
    text = egress.refusal_text(address, refusal("receiver", str(address)) or "")
    assert text == (
        "not connected: ::ffff:a9fe:a9fe (IPv4-mapped 169.254.169.254) is cloud metadata; "
        "if it is meant, ask the operator's admin to add it to MFL_EGRESS_ALLOW"
    )
    longest = egress.refusal_text(
        ipaddress.ip_address("fd12:3456:789a:1:ffff:ffff:ffff:ffff"), "unique local IPv6 (fc00::/7)"
    )
    assert len(longest) <= 160  # the poller keeps 160 characters of an error's text


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0177.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
        ("0", "0.0.0.0"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("fe80::1%25eth0", "fe80::1"),
    ],
)
def test_literal_addresses_are_read_in_every_spelling_a_resolver_accepts(host: str, address: str) -> None:
    assert egress.literal_address(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    "host", ["example.com", "1.2.3.4.5", "08.1.1.1", "1e3", "0x1g", "256.1.1.1", "1.2.3.256", "hooks.svc"]
)
def test_names_are_no_literal_addresses(host: str) -> None:
    assert egress.literal_address(host) is None


def spec_with(webhook: str | None = None, gate: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "churn", "storage": {"persistentVolumeClaim": {"claimName": "artifacts"}}},
        "monitoring": {"prometheus": {"url": "http://prometheus:9090"}},
    }
    if webhook:
        spec["notifications"] = [{"url": "https://ok.example.com/hook"}, {"url": webhook}]
    if gate:
        spec["rollout"] = {"confirmPromotion": {"url": gate}}
    return spec


SPECIAL_RECEIVERS = [
    "http://[::ffff:127.0.0.1]:8080/hook",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
    "https://[::ffff:7f00:1]/",
    "https://[::1]:8443/",
    "https://[64:ff9b::a9fe:a9fe]/",
    "https://[2002:7f00:1::1]/",
    "https://[fd00:ec2::254]/latest/",
    "https://[fe80::1%25eth0]/",
    "https://127.0.0.1/hook",
    "https://2130706433/hook",
    "https://0x7f.1/hook",
    "https://0177.0.0.1/hook",
    "https://127.1/hook",
    "https://127.0.0.1./hook",
    "https://169.254.169.254/latest/",
    "https://0.0.0.0:8080/",
    "https://localhost:8443/",
    "https://LOCALHOST./",
    "https://api.localhost/",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://134744072/",  # 8.8.8.8, spelled so that parsers disagree
    "http://127.0.0.1:9000/",
]


@pytest.mark.parametrize("url", SPECIAL_RECEIVERS)
def test_a_webhook_at_a_special_address_is_refused_when_the_spec_is_parsed(url: str) -> None:
    with pytest.raises(ValidationError) as error:
        validate_spec(spec_with(webhook=url))
    message = describe_validation_error(error.value)
    assert "spec.notifications.1.url" in message


@pytest.mark.parametrize("url", SPECIAL_RECEIVERS)
def test_a_confirm_promotion_at_a_special_address_is_refused_when_the_spec_is_parsed(url: str) -> None:
    with pytest.raises(ValidationError) as error:
        validate_spec(spec_with(gate=url))
    assert "spec.rollout.confirmPromotion.url" in describe_validation_error(error.value)


def test_the_refusal_says_what_the_address_is() -> None:
    with pytest.raises(ValidationError) as error:
        validate_spec(spec_with(webhook="http://[::ffff:a9fe:a9fe]/latest"))
    assert "cloud metadata (IPv4-mapped 169.254.169.254)" in describe_validation_error(error.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://receiver.team-a.svc:8080/hook",
        "http://receiver.team-a.svc.cluster.local/hook",
        "http://10.245.0.1:9000/",
        "http://[::ffff:10.245.0.1]:9000/",
        "http://[fd12::1]:9000/",
        "https://hooks.slack.com/services/T/B/X",
        "https://8.8.8.8/hook",
    ],
)
def test_in_cluster_and_public_receivers_still_parse(url: str) -> None:
    """A private receiver parses (the admin may allow it); the connect-time policy refuses it otherwise."""
    assert validate_spec(spec_with(webhook=url, gate=url)).notifications[1].url == url
