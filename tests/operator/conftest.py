"""Fixtures shared by the operator's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from feedbackloop.core.egress import EgressPolicy
from feedbackloop.core.settings import egress_allowance
from feedbackloop.runtime import egress_net


@pytest.fixture
def loopback_receivers() -> Iterator[None]:
    """For a test whose webhook receiver or Prometheus is a real server on this machine's loopback: the test
    process's admin allows 127.0.0.0/8 and ::1 (MFL_EGRESS_ALLOW), which the egress policy refuses by default.
    The spec refuses loopback URLs when it is parsed, so such a test builds its Webhook without validation
    (`Webhook.model_construct(url=...)`), standing for a name that resolves to the server."""
    with egress_net.installed(EgressPolicy(allow=egress_allowance("127.0.0.0/8 ::1", "MFL_EGRESS_ALLOW"))):
        yield
