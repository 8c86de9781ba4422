"""A loop's Prometheus token goes only over verified TLS to a host its Secret names (issue 10)."""

from __future__ import annotations

import pytest

from feedbackloop.core.credentials import ALLOWED_HOSTS, redact, token_refusal

OPTED_IN = {ALLOWED_HOSTS: "prometheus.monitoring.svc, thanos.example.com:443"}


@pytest.mark.parametrize(
    ("url", "insecure", "annotations", "refused_because"),
    [
        ("https://prometheus.monitoring.svc:9090", False, OPTED_IN, ""),
        ("https://thanos.example.com", False, OPTED_IN, "not thanos.example.com"),  # only :443 was named
        ("https://thanos.example.com:443/api", False, OPTED_IN, ""),
        ("https://PROMETHEUS.monitoring.svc", False, OPTED_IN, ""),
        ("http://prometheus.monitoring.svc:9090", False, OPTED_IN, "only sent over https"),
        ("https://prometheus.monitoring.svc", True, OPTED_IN, "insecureSkipVerify"),
        ("https://prometheus.monitoring.svc", False, {}, "does not say where its token may go"),
        ("https://attacker.example.com", False, OPTED_IN, "not attacker.example.com"),
        ("https://prometheus.monitoring.svc.attacker.example.com", False, OPTED_IN, "not prometheus"),
    ],
)
def test_the_token_goes_only_where_the_secret_allows(url, insecure, annotations, refused_because) -> None:  # noqa: ANN001
    refusal = token_refusal(url, insecure, "team-a/prom-token", annotations)
    if refused_because:
        assert refused_because in refusal
    else:
        assert refusal == ""


def test_a_refusal_tells_the_user_what_to_write() -> None:
    refusal = token_refusal("https://prometheus.monitoring.svc", False, "team-a/prom-token", {})
    assert f"{ALLOWED_HOSTS}=prometheus.monitoring.svc" in refusal


def test_credentials_in_a_url_are_never_shown() -> None:
    assert redact("https://user:s3cret@prometheus:9090/x?q=1") == "https://***@prometheus:9090/x?q=1"
    assert redact("http://prometheus:9090") == "http://prometheus:9090"
    assert "s3cret" not in token_refusal("http://user:s3cret@p:9090", False, "s", OPTED_IN)
