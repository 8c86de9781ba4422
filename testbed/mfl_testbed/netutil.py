"""Loopback ports, polling and small HTTP helpers for the test bed (standard library only)."""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, TypeVar

LOOPBACK = "127.0.0.1"
T = TypeVar("T")


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct ports that are free right now on `host`.

    All sockets stay bound until every port is picked, so the ports differ from each other.
    """
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port(host: str = LOOPBACK) -> int:
    return free_ports(1, host)[0]


def wait_until(
    probe: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.2,
    on_poll: Callable[[], None] | None = None,
) -> T:
    """Call `probe` until it returns a truthy value and return that value.

    Exceptions from `probe` count as "not yet"; the last one is reported on timeout.
    `on_poll` runs before each attempt and may raise to give up early (e.g. a process died).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if on_poll is not None:
            on_poll()
        try:
            result = probe()
            if result:
                return result
        except Exception as error:  # noqa: BLE001 - any failure means "not ready yet"
            last_error = error
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def insecure_tls_context() -> ssl.SSLContext:
    """TLS without verification: the test bed's certificates are self-signed."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def http_request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    context: ssl.SSLContext | None = None,
) -> tuple[int, bytes]:
    """Status and body of one HTTP request; HTTP error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def http_json(url: str, timeout: float = 5.0, **kwargs: Any) -> Any:
    """GET `url` and decode its JSON body; raise on a non-2xx status."""
    status, body = http_request(url, timeout=timeout, **kwargs)
    if not 200 <= status < 300:
        raise RuntimeError(f"GET {url} -> HTTP {status}: {body[:300]!r}")
    return json.loads(body)
