"""When the operator may send a loop's Prometheus credentials, and how URLs are shown without them.

The threat: the operator can read every Secret its loops name, but a loop's author may not be allowed
to. A loop naming someone else's Secret and a Prometheus URL of its own would receive that Secret as
a bearer token. So a token goes out only when the Secret itself says where it may go (as the
Prometheus Operator ties a ServiceMonitor's credentials to its namespace and Flagger a MetricTemplate's
to its own, but stricter: bound to hosts), and only over verified TLS, where nobody on the path can
read it. Anyone who may annotate the Secret may read it anyway, so the annotation grants nothing new.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

ALLOWED_HOSTS = "feedbackloop.dev/prometheus-hosts"


def token_refusal(url: str, insecure_skip_verify: bool, secret: str, annotations: dict[str, str]) -> str:
    """Why the bearer token of `secret` may not be sent to `url` ('' when it may)."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        return f"a bearer token is only sent over https; {redact(url)} is {parts.scheme}"
    if insecure_skip_verify:
        return "a bearer token is not sent with insecureSkipVerify: an unverified server could be anyone"
    allowed = {host.strip().lower() for host in annotations.get(ALLOWED_HOSTS, "").split(",") if host.strip()}
    if not allowed:
        return (
            f"Secret {secret} does not say where its token may go: annotate it "
            f"{ALLOWED_HOSTS}={parts.hostname} (comma-separated hosts)"
        )
    host = (parts.hostname or "").lower()
    if host not in allowed and f"{host}:{parts.port}" not in allowed:
        return f"Secret {secret} allows its token only to {', '.join(sorted(allowed))}, not {host}"
    return ""


def redact(url: str) -> str:
    """The URL without credentials written into it (user:password@), for messages, status and Events."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))
