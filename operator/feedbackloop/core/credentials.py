"""When the operator may send a loop's Prometheus credentials or let its Pods use object store keys, and how
URLs are shown without them.

The threat: the operator can read every Secret its loops name, but a loop's author may not be allowed
to. A loop naming someone else's Secret and a Prometheus URL of its own would receive that Secret as
a bearer token. So a token goes out only when the Secret itself says where it may go (as the
Prometheus Operator ties a ServiceMonitor's credentials to its namespace and Flagger a MetricTemplate's
to its own, but stricter: bound to hosts), and only over verified TLS, where nobody on the path can
read it. Anyone who may annotate the Secret may read it anyway, so the annotation grants nothing new.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
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


# --- receivers' Secrets (spec.notifications[], rollout.confirmPromotion) -----------------------------------
# A URL read from a Secret (urlFrom) goes only to itself, so it needs no binding: the loop's readers never see
# it. A header value read from a Secret (valueFrom) goes to the receiver's host, which the loop's author chose:
# the Secret must name that host, as the Prometheus token's must.

WEBHOOK_HOSTS = "feedbackloop.dev/webhook-hosts"


def header_refusal(url: str, secret: str, key: str, annotations: dict[str, str]) -> str:
    """Why the value of `secret`'s `key` may not be sent as a header to `url` ('' when it may). Names the host
    only, never the URL: the URL may come from a Secret too (its path is the credential, not its host)."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    port = urlsplit(url).port
    allowed = {h.strip().lower() for h in annotations.get(WEBHOOK_HOSTS, "").split(",") if h.strip()}
    if host in allowed or (port is not None and f"{host}:{port}" in allowed):
        return ""
    said = (
        f"allows its values only to {', '.join(sorted(allowed))}" if allowed else "does not say where its values may go"
    )
    value = ",".join(sorted(allowed | {host}))
    return f"Secret {secret} (key {key}, a header's value) {said}, not {host}: annotate it {WEBHOOK_HOSTS}={value}"


def redact(url: str) -> str:
    """The URL without credentials written into it (user:password@), for messages, status and Events."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


# --- object store credentials ---------------------------------------------------------------------------
# The same threat as the token's, with more at stake: the Pods the operator creates send a bucket's keys to
# spec.model.storage.s3.endpoint. So they are created only when the Secret names that host.

S3_HOSTS = "feedbackloop.dev/s3-hosts"
S3_KEYS = ("accessKeyId", "secretAccessKey")
NOT_BOUND = "StorageCredentialsNotBound"  # the Secret does not allow the endpoint's host
MISSING = "StorageCredentialsMissing"  # no such Secret, it cannot be read, or it lacks a key


@dataclass(frozen=True)
class Refusal:
    """Why the operator creates no Pod and no Job for a loop: a condition reason and what to do about it."""

    reason: str
    message: str


def s3_refusal(
    endpoint: str, namespace: str, secret: str, annotations: dict[str, str] | None, keys: Collection[str] = ()
) -> Refusal | None:
    """Why the keys of `secret` may not go to `endpoint` (None when they may). `annotations` None: no such
    Secret. Hosts match case-insensitively, as `host` (any port) or `host:port`."""
    parts = urlsplit(endpoint)
    host = (parts.hostname or "").lower()
    where = f"{host}:{parts.port}" if parts.port else host
    if annotations is None:
        return Refusal(
            MISSING,
            f"Secret {namespace}/{secret} (storage.s3.credentialsSecret) does not exist: create it with keys "
            f"{' and '.join(S3_KEYS)} and the annotation {S3_HOSTS}={host}",
        )
    absent = [key for key in S3_KEYS if key not in keys]
    if absent:
        return Refusal(MISSING, f"Secret {namespace}/{secret} has no key {' or '.join(absent)}: add it")
    allowed = [h.strip().lower() for h in annotations.get(S3_HOSTS, "").split(",") if h.strip()]
    if host in allowed or (parts.port is not None and where in allowed):
        return None
    value = ",".join([*allowed, host])
    said = f"allows its keys only to {', '.join(allowed)}" if allowed else "does not say where its keys may go"
    return Refusal(
        NOT_BOUND,
        f"Secret {namespace}/{secret} {said}, not {where} (storage.s3.endpoint): annotate it {S3_HOSTS}={value} "
        f"(kubectl -n {namespace} annotate secret {secret} --overwrite {S3_HOSTS}={value}); no Pod is created "
        "until then",
    )


def unreadable(namespace: str, secret: str, error: str) -> Refusal:
    """The Secret could not be read (no permission, API error): nothing proves the keys may go there."""
    return Refusal(MISSING, f"cannot read Secret {namespace}/{secret} (storage.s3.credentialsSecret): {error}")
