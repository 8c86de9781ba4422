"""The CLI's only door to Kubernetes: find the kubeconfig and its namespace, read, watch and annotate loops.

Every failure leaves here as a `CliError` with a one-line message; the API's answers and the network's
errors are translated by the pure functions at the bottom, so the commands never see a client exception.
"""

from __future__ import annotations

import base64
import errno
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedbackloop.core import api

RESOURCE = "modelfeedbackloop"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
WATCH_SECONDS = 240  # one watch request; then the loop is read again and a new watch starts


class CliError(Exception):
    """A failure the user can act on: its message is printed as one line, no traceback."""


class UsageError(CliError):
    """A command that cannot work as given (exit code 2, as argparse's usage errors)."""


@dataclass(frozen=True)
class Target:
    """Where a command points, as the user gave it (None: what the kubeconfig says)."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    timeout: float | None = 15.0  # None: no timeout (--request-timeout=0, as kubectl)


@dataclass(frozen=True)
class Selector:
    """kubectl's -l/--selector and --field-selector, passed to the API server as they are."""

    labels: str | None = None
    fields: str | None = None

    def query(self) -> dict[str, str]:
        return {
            **({"label_selector": self.labels} if self.labels else {}),
            **({"field_selector": self.fields} if self.fields else {}),
        }


class Loops:
    """ModelFeedbackLoop objects through a CustomObjectsApi (the real one, or a test's); the loop's Secrets and
    its server (through the API server's service proxy) through a CoreV1Api."""

    def __init__(
        self, custom: Any, host: str = "", timeout: float | None = 15.0, core: Any = None, apps: Any = None
    ) -> None:
        self.custom = custom
        self.host = host
        self.timeout = timeout
        self.core = core
        self.apps = apps

    def get(self, name: str, namespace: str) -> dict[str, Any]:
        with self._errors(name, namespace):
            return self.custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name, _request_timeout=self.timeout
            )

    def list(self, namespace: str | None, selector: Selector | None = None) -> list[dict[str, Any]]:
        """The loops of `namespace`, or of every namespace when it is None; `selector` as kubectl's -l and
        --field-selector (the API server filters)."""
        return self.list_object(namespace, selector).get("items", [])

    def list_object(self, namespace: str | None, selector: Selector | None = None) -> dict[str, Any]:
        """The List itself (its metadata.resourceVersion starts a watch)."""
        with self._errors(None, namespace):
            return self._list(namespace, (selector or Selector()).query(), _request_timeout=self.timeout)

    def _list(self, namespace: str | None, query: dict[str, str], **options: Any) -> Any:
        if namespace is None:
            return self.custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL, **query, **options)
        return self.custom.list_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, **query, **options
        )

    def watch_list(self, namespace: str | None, selector: Selector) -> Iterator[tuple[str, dict[str, Any]]]:
        """kubectl get -w: ("LISTED", loop) for each loop now, then (event type, loop) for every change, until
        the caller stops (a watch request ends after WATCH_SECONDS; a new one goes on from where it was, and
        after 410 Gone the loops are listed again)."""
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        listed = self.list_object(namespace, selector)
        for loop in listed.get("items", []):
            yield "LISTED", loop
        version = (listed.get("metadata") or {}).get("resourceVersion")
        while True:
            stream = watch.Watch().stream(
                self._list,
                namespace,
                selector.query(),
                resource_version=version,
                timeout_seconds=WATCH_SECONDS,
                _request_timeout=self._watch_timeout(),
            )
            try:
                with self._errors(None, namespace):
                    for event in stream:
                        loop = event["raw_object"]
                        version = (loop.get("metadata") or {}).get("resourceVersion", version)
                        yield event["type"], loop
            except CliError as error:
                if not isinstance(error.__cause__, ApiException) or error.__cause__.status != 410:
                    raise
                listed = self.list_object(namespace, selector)  # 410 Gone: list again, watch from there
                for loop in listed.get("items", []):
                    yield "MODIFIED", loop
                version = (listed.get("metadata") or {}).get("resourceVersion")

    def _watch_timeout(self) -> tuple[float, float] | None:
        # The server ends the request after WATCH_SECONDS; the read timeout only catches a dead link.
        return None if self.timeout is None else (self.timeout, WATCH_SECONDS + self.timeout)

    def operator_deployments(self, namespace: str, selector: str) -> tuple[Any, ...]:
        """The operator's Deployments (`mfl version`): those of `namespace` that `selector` matches."""
        with self._errors(None, namespace, kind="Deployment"):
            found = self.apps.list_namespaced_deployment(
                namespace, label_selector=selector, _request_timeout=self.timeout
            )
        return tuple(found.items or [])

    def annotate(self, name: str, namespace: str, annotations: dict[str, str]) -> dict[str, Any]:
        """A JSON merge patch of metadata.annotations only: the spec stays the user's (and GitOps's)."""
        with self._errors(name, namespace):
            return self.custom.patch_namespaced_custom_object(
                api.GROUP,
                api.VERSION,
                namespace,
                api.PLURAL,
                name,
                {"metadata": {"annotations": annotations}},
                _content_type="application/merge-patch+json",
                _request_timeout=self.timeout,
            )

    def watch(self, name: str, namespace: str) -> Iterator[dict[str, Any]]:
        """The loop now, then again on every change, until it is deleted (CliError) or the caller stops."""
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        while True:
            loop = self.get(name, namespace)
            yield loop
            stream = watch.Watch().stream(
                self.custom.list_namespaced_custom_object,
                api.GROUP,
                api.VERSION,
                namespace,
                api.PLURAL,
                field_selector=f"metadata.name={name}",
                resource_version=loop["metadata"].get("resourceVersion"),
                timeout_seconds=WATCH_SECONDS,
                _request_timeout=self._watch_timeout(),
            )
            try:
                with self._errors(name, namespace):
                    for event in stream:
                        if event["type"] == "DELETED":
                            raise CliError(f"{RESOURCE} {name!r} was deleted from namespace {namespace!r}")
                        yield event["raw_object"]
            except CliError as error:
                if not isinstance(error.__cause__, ApiException) or error.__cause__.status != 410:
                    raise
                # 410 Gone: our resourceVersion is too old; read the loop again and watch from there.

    def secret_value(self, name: str, namespace: str, key: str) -> bytes:
        """One key of a Secret, decoded (the loop's S3 credentials, CA bundle, database URL)."""
        with self._errors(name, namespace, kind="Secret"):
            secret = self.core.read_namespaced_secret(name, namespace, _request_timeout=self.timeout)
        data = secret.data or {}
        if key not in data:
            raise CliError(
                f"Secret {namespace}/{name} has no key {key!r} (it has: {', '.join(sorted(data)) or 'none'})"
            )
        return base64.b64decode(data[key])

    def post_to_service(self, namespace: str, service: str, port: str, path: str, body: Any) -> tuple[int, bytes]:
        """POST JSON to a Service through the API server's proxy (no port-forward, no Ingress needed): the
        status and body of whoever answered, the Service's Pod or the API server itself (403, 503 without
        endpoints). Network failures are a CliError."""
        api_client = self.core.api_client
        resource = f"/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy/{path.lstrip('/')}"
        request = api_client.param_serialize(
            "POST",
            resource,
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        with self._errors(service, namespace, kind="Service"):
            response = api_client.call_api(*request, _request_timeout=self.timeout)
            return response.status, response.read() or b""

    @contextmanager
    def _errors(self, name: str | None, namespace: str | None, kind: str = RESOURCE) -> Iterator[None]:
        import urllib3
        from kubernetes.client.rest import ApiException

        try:
            yield
        except ApiException as error:
            if kind != RESOURCE:
                body = error.body or error.reason  # status 0: the client's own failure (TLS), said in `reason`
                raise CliError(object_error_message(kind, error.status, body, name, namespace)) from error
            raise CliError(api_error_message(error.status, error.body, name, namespace)) from error
        except urllib3.exceptions.HTTPError as error:
            raise CliError(unreachable_message(self.host, error)) from error


def connect(target: Target) -> tuple[Loops, str]:
    """The adapter for the target's cluster and the namespace to use: the given one, else the context's."""
    import urllib3
    import yaml
    from kubernetes import client, config

    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # the kubeconfig chose it
    files = kubeconfig_files(target.kubeconfig, os.environ)
    try:
        if files:
            merged = os.pathsep.join(files)  # the client merges a KUBECONFIG list as kubectl does
            namespace = context_namespace(merged, target.context)
            api_client = config.new_client_from_config(config_file=merged, context=target.context)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            api_client = client.ApiClient(configuration)
            namespace = IN_CLUSTER_NAMESPACE.read_text().strip() if IN_CLUSTER_NAMESPACE.exists() else "default"
        else:
            raise CliError(missing_kubeconfig_message(os.environ))
    except (config.ConfigException, OSError, ValueError, yaml.YAMLError) as error:
        where = " ".join(files) if files else "of the in-cluster service account"
        raise CliError(f"cannot use the kubeconfig {where}: {first_line(error)}") from error
    api_client.configuration.retries = 1  # a refused connection fails in a second, not after three tries
    host = api_client.configuration.host
    loops = Loops(
        client.CustomObjectsApi(api_client),
        host,
        target.timeout,
        client.CoreV1Api(api_client),
        client.AppsV1Api(api_client),
    )
    return loops, target.namespace or namespace


def context_namespace(kubeconfig: str, context: str | None) -> str:
    """The namespace of the named (or current) context, as kubectl uses it; 'default' when it has none."""
    from kubernetes import config

    contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = next((c for c in contexts if c["name"] == context), None) if context else current
    if chosen is None:
        raise CliError(f"context {context!r} not found in {kubeconfig}")
    return (chosen.get("context") or {}).get("namespace") or "default"


# --- pure: where the kubeconfig is, and what an error means --------------------------------------------


def kubeconfig_files(given: str | None, env: Mapping[str, str]) -> list[str]:
    """The kubeconfig to read, as kubectl finds it: --kubeconfig, else $KUBECONFIG's files, else ~/.kube/config.

    $KUBECONFIG may list several files: the existing ones, in order (missing ones are skipped, as kubectl does).
    """
    if given:
        if not Path(given).expanduser().is_file():
            raise CliError(f"kubeconfig {given} not found")
        return [str(Path(given).expanduser())]
    listed = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    candidates = listed or [str(Path(env.get("HOME", "~")).expanduser() / ".kube" / "config")]
    return [p for p in candidates if Path(p).expanduser().is_file()]


def missing_kubeconfig_message(env: Mapping[str, str]) -> str:
    looked = env.get("KUBECONFIG") or str(Path(env.get("HOME", "~")) / ".kube" / "config")
    return f"no kubeconfig found (looked at {looked}): pass --kubeconfig FILE or set KUBECONFIG"


def api_error_message(status: int | None, body: str | bytes | None, name: str | None, namespace: str | None) -> str:
    """One line for an API error. A 404 without the object's name in its details is a missing resource
    type (the CRD is not installed), not a missing loop."""
    answer = parse_status(body)
    message = answer.get("message") or first_line(body or "") or "no message"
    if status == 404:
        details = answer.get("details") or {}
        if name and details.get("name") == name:
            return f"{RESOURCE} {name!r} not found in namespace {namespace!r}"
        return (
            f"the {api.KIND} resource type is not installed on this cluster (CRD {api.PLURAL}.{api.GROUP} "
            f"{api.VERSION}): kubectl apply -k manifests/"
        )
    if status == 403:
        return f"forbidden: {message}"
    if status == 401:
        return f"unauthorized: the kubeconfig's credentials were refused ({message})"
    return f"the API server answered {status}: {message}"


def object_error_message(
    kind: str, status: int | None, body: str | bytes | None, name: str | None, namespace: str | None
) -> str:
    """One line for an API error about a core object the CLI reads for a loop (its Secrets, its Service)."""
    answer = parse_status(body)
    message = answer.get("message") or first_line(body or "") or "no message"
    if status == 404:
        return f"{kind} {name!r} not found in namespace {namespace!r}"
    if status == 403:
        return f"forbidden: {message}"
    if status == 401:
        return f"unauthorized: the kubeconfig's credentials were refused ({message})"
    return f"the API server answered {status} for {kind} {name!r}: {message}"


def unreachable_message(host: str, error: BaseException) -> str:
    return f"cannot reach the cluster at {host or 'the API server'}: {network_reason(error)}"


def network_reason(error: BaseException) -> str:
    """What went wrong on the wire, in words: the innermost cause urllib3 recorded."""
    import urllib3

    cause: BaseException | None = getattr(error, "reason", None) or error.__cause__ or error.__context__
    # First: urllib3 makes NewConnectionError a ConnectTimeoutError, although it is any failed connect.
    if isinstance(error, urllib3.exceptions.NewConnectionError):
        os_error = error.__cause__ or error.__context__
        if isinstance(os_error, ConnectionRefusedError) or getattr(os_error, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        text = str(error)  # "<connection object>: Failed to resolve 'host' (...)": keep what failed
        return first_line(text[text.find("Failed to") :] if "Failed to" in text else text)
    if isinstance(error, urllib3.exceptions.ReadTimeoutError):
        return "no answer in time (read timeout)"
    if isinstance(error, urllib3.exceptions.ConnectTimeoutError):
        return "connection timed out"
    if isinstance(error, urllib3.exceptions.SSLError):
        return f"TLS error: {first_line(error)}"
    if cause is not None and cause is not error:
        return network_reason(cause)
    return first_line(error)


def parse_status(body: str | bytes | None) -> dict[str, Any]:
    """The metav1.Status in an error body, or {} when the body is not one (e.g. '404 page not found')."""
    try:
        value = json.loads(body or "")
    except (ValueError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def first_line(value: object) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return (text.strip().splitlines() or [""])[0][:300]
