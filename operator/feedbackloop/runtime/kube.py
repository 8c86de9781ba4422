"""The thin edge to the Kubernetes API (the official client, called from worker threads).

Every create is idempotent: names are deterministic, and AlreadyExists means "it is there" once we
have checked that the object is ours (a controller owner reference to this loop).
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import socket
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from feedbackloop.core import api, resources

log = logging.getLogger(__name__)


def load_config(kubeconfig: str | None = None) -> None:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig)


class NotOurs(RuntimeError):
    """An object with the name we need exists and another controller owns it."""


class KubeAPI(Protocol):
    """What the engine needs of the Kubernetes API (Kube below; tests use an in-memory fake)."""

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> Any: ...
    def event(self, loop: dict[str, Any], type_: str, reason: str, message: str) -> None: ...
    def ensure_signing_secret(self, loop: dict[str, Any]) -> None: ...
    def ensure_service(self, loop: dict[str, Any], body: dict[str, Any]) -> None: ...
    def ensure_deployment(self, loop: dict[str, Any], body: dict[str, Any]) -> None: ...
    def delete_deployment(self, namespace: str, name: str) -> None: ...
    def create_job(self, loop: dict[str, Any], body: dict[str, Any]) -> None: ...
    def delete_job(self, namespace: str, name: str) -> None: ...
    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def job_pod_termination(self, namespace: str, job_name: str) -> tuple[str, str]: ...
    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...
    def pod_log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str: ...
    def set_route_weights(self, loop: dict[str, Any], route_name: str, canary_weight: int) -> None: ...
    def read_secret_key(self, namespace: str, name: str, key: str) -> tuple[str, dict[str, str]]: ...
    def read_secret_metadata(self, namespace: str, name: str) -> tuple[dict[str, str], list[str]] | None: ...


class Kube:
    def __init__(self) -> None:
        self.core = client.CoreV1Api()
        self.apps = client.AppsV1Api()
        self.batch = client.BatchV1Api()
        self.custom = client.CustomObjectsApi()
        self.host = socket.gethostname()

    # --- status and events ------------------------------------------------------------------------
    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource (null deletes a key; lists are replaced whole)."""
        return self.custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": status}
        )

    def event(self, loop: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = loop["metadata"]
        now = datetime.now(UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=f"{api.GROUP}/{api.VERSION}",
                kind=api.KIND,
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta["uid"],
                resource_version=meta.get("resourceVersion"),
            ),
            reason=reason,
            message=message[:1024],
            type=type_,
            count=1,
            first_timestamp=now,
            last_timestamp=now,
            source=client.V1EventSource(component="feedbackloop-operator", host=self.host),
            reporting_component="feedbackloop.dev/operator",
            reporting_instance=self.host,
        )
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as error:  # an Event is best effort; never fail a reconcile for it
            log.warning("could not post event %s for %s/%s: %s", reason, meta["namespace"], meta["name"], error.reason)

    # --- generic apply ----------------------------------------------------------------------------
    def _create_or_check(self, create, read, namespace: str, body: dict[str, Any], loop_uid: str) -> dict[str, Any]:
        try:
            return create(namespace, body).to_dict()
        except ApiException as error:
            if error.status != 409:
                raise
        existing = read(body["metadata"]["name"], namespace)
        owners = existing.metadata.owner_references or []
        if not any(o.uid == loop_uid and o.controller for o in owners):
            raise NotOurs(
                f"{body['kind']} {namespace}/{body['metadata']['name']} exists and is not owned by "
                f"this loop; rename or delete it"
            )
        return existing.to_dict()

    # --- serving ----------------------------------------------------------------------------------
    def ensure_signing_secret(self, loop: dict[str, Any]) -> None:
        body = resources.signing_secret(loop, secrets.token_urlsafe(32))
        self._create_or_check(
            self.core.create_namespaced_secret,
            self.core.read_namespaced_secret,
            loop["metadata"]["namespace"],
            body,
            loop["metadata"]["uid"],
        )

    def ensure_service(self, loop: dict[str, Any], body: dict[str, Any]) -> None:
        self._create_or_check(
            self.core.create_namespaced_service,
            self.core.read_namespaced_service,
            loop["metadata"]["namespace"],
            body,
            loop["metadata"]["uid"],
        )

    def ensure_deployment(self, loop: dict[str, Any], body: dict[str, Any]) -> None:
        namespace, name = loop["metadata"]["namespace"], body["metadata"]["name"]
        self._create_or_check(
            self.apps.create_namespaced_deployment,
            self.apps.read_namespaced_deployment,
            namespace,
            body,
            loop["metadata"]["uid"],
        )
        # Converge replicas, labels and the pod template; a no-op patch does not bump the generation. The pod
        # spec is replaced whole ("$patch": "replace"), not merged: a strategic merge keeps containers, env
        # variables and nodeSelector keys the spec no longer has (a removed feedback sidecar would stay).
        metadata = {"labels": body["metadata"]["labels"], "annotations": body["metadata"].get("annotations") or {}}
        template = body["spec"]["template"]
        spec = {**body["spec"], "template": {**template, "spec": {**template["spec"], "$patch": "replace"}}}
        self.apps.patch_namespaced_deployment(name, namespace, {"metadata": metadata, "spec": spec})

    def delete_deployment(self, namespace: str, name: str) -> None:
        try:
            self.apps.delete_namespaced_deployment(name, namespace, propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise

    # --- training ---------------------------------------------------------------------------------
    def create_job(self, loop: dict[str, Any], body: dict[str, Any]) -> None:
        self._create_or_check(
            self.batch.create_namespaced_job,
            self.batch.read_namespaced_job,
            loop["metadata"]["namespace"],
            body,
            loop["metadata"]["uid"],
        )

    def delete_job(self, namespace: str, name: str) -> None:
        try:  # Background: the Job's Pods go with it (the API's default for Jobs would orphan them)
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.batch.read_namespaced_job(name, namespace).to_dict()
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def job_pod_termination(self, namespace: str, job_name: str) -> tuple[str, str]:
        """(termination message, reason) of the Job's newest finished Pod."""
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
        finished = []
        for pod in pods:
            for status in pod.status.container_statuses or []:
                if status.state and status.state.terminated:
                    finished.append(
                        (
                            status.state.terminated.finished_at or datetime.min.replace(tzinfo=UTC),
                            status.state.terminated,
                        )
                    )
        if not finished:
            return "", ""
        terminated = max(finished, key=lambda item: item[0])[1]
        return (terminated.message or "").strip(), f"{terminated.reason} (exit code {terminated.exit_code})"

    # --- serving Pods -----------------------------------------------------------------------------
    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """Pods as the API serves them (camelCase JSON, like the watched Deployments), not the client's models."""
        response = self.core.list_namespaced_pod(namespace, label_selector=label_selector, _preload_content=False)
        return list(json.loads(response.data).get("items") or [])

    def pod_log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
        """The last `lines` lines of a container's log (at most 16 KiB)."""
        return str(
            self.core.read_namespaced_pod_log(pod, namespace, container=container, tail_lines=lines, limit_bytes=16384)
        )

    # --- traffic routing --------------------------------------------------------------------------
    def set_route_weights(self, loop: dict[str, Any], route_name: str, canary_weight: int) -> None:
        namespace = loop["metadata"]["namespace"]
        route = self.custom.get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", namespace, "httproutes", route_name
        )
        patch = resources.http_route_weights(route, loop["metadata"]["name"], canary_weight)
        self.custom.patch_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", namespace, "httproutes", route_name, patch
        )

    def read_secret_key(self, namespace: str, name: str, key: str) -> tuple[str, dict[str, str]]:
        """A key's value, and the Secret's annotations (which say where a token may be sent)."""
        secret = self.core.read_namespaced_secret(name, namespace)
        data = (secret.data or {}).get(key)
        if data is None:
            raise KeyError(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(data).decode(), dict(secret.metadata.annotations or {})

    def read_secret_metadata(self, namespace: str, name: str) -> tuple[dict[str, str], list[str]] | None:
        """A Secret's annotations and key names, not its values (None when it does not exist): whether the
        object store keys it holds may go where a loop's Pods would send them."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(secret.metadata.annotations or {}), sorted(secret.data or {})
