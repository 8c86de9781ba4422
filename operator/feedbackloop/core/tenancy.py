"""Who pays for a query or a notification, and which server it loads: the keys of the fair shares.

A tenant is a namespace: the part of a loop's key (namespace/name) before the '/'. A host is the scheme, host
name and port of a URL, whatever its path, user info, query or letter case: four URLs that differ only in
their path load one server, and share its slots (runtime/slots.py).
"""

from __future__ import annotations

from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


def tenant_of(loop_key: str) -> str:
    """The namespace of a loop key ("team-a/churn" -> "team-a")."""
    return loop_key.split("/", 1)[0]


def origin(url: str) -> str:
    """scheme://host:port of a URL, the port always written out and the host lower case without a trailing dot
    ("HTTP://Prometheus.:80/a/b?x" -> "http://prometheus:80"); a URL that does not parse is its own key."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    return f"{scheme}://{host}:{port if port is not None else DEFAULT_PORTS.get(scheme, '')}"
