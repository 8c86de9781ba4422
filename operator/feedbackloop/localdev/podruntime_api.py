"""The runtime's edge to the Kubernetes API (the official client, raw JSON dicts, retries)."""
from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
RETRYABLE_STATUSES = {409, 429, 500, 502, 503, 504}
REQUEST_TIMEOUT = 15


class PodGone(Exception):
    """The Pod (this very uid) no longer exists."""


def retrying(action: Callable[[], Any], what: str, attempts: int = 6, first_delay: float = 0.2,
             statuses: frozenset[int] | set[int] = frozenset(RETRYABLE_STATUSES)) -> Any:
    """Run `action`, retrying conflicts, throttling, server and connection errors with backoff."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except ApiException as error:
            if error.status not in statuses or attempt == attempts:
                raise
            log.debug("%s: HTTP %s, retrying", what, error.status)
        except urllib3.exceptions.HTTPError:
            if attempt == attempts:
                raise
            log.debug("%s: connection error, retrying", what)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


class KubeApi:
    def __init__(self, kubeconfig: str | None) -> None:
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        configuration.connection_pool_maxsize = 32  # one status writer per pod, plus the watch
        if not configuration.verify_ssl:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # the test bed's own choice
        self.client = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.client)

    def close(self) -> None:
        self.client.close()

    def _json(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        response = call(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        return json.loads(response.data)

    def _optional(self, call: Callable[..., Any], *args: Any) -> dict[str, Any] | None:
        try:
            return retrying(lambda: self._json(call, *args), f"read {args}")
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    # --- ObjectReader (env and volumes) ---------------------------------------------------------
    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        secret = self._optional(self.core.read_namespaced_secret, name, namespace)
        if secret is None:
            return None
        return {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}

    def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None:
        config_map = self._optional(self.core.read_namespaced_config_map, name, namespace)
        if config_map is None:
            return None
        data = {key: value.encode() for key, value in (config_map.get("data") or {}).items()}
        data.update({key: base64.b64decode(value) for key, value in (config_map.get("binaryData") or {}).items()})
        return data

    # --- pods -----------------------------------------------------------------------------------
    def list_pods(self, node: str) -> tuple[list[dict[str, Any]], str]:
        listing = retrying(lambda: self._json(self.core.list_pod_for_all_namespaces,
                                              field_selector=f"spec.nodeName={node}"), "list pods")
        return listing.get("items") or [], listing["metadata"]["resourceVersion"]

    def patch_pod_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        """Merge-patch the kubelet-owned status fields; the uid in the patch guards a recreated Pod."""
        metadata = pod["metadata"]
        body = {"metadata": {"uid": metadata["uid"]}, "status": status}

        def patch() -> None:
            self.core.patch_namespaced_pod_status(metadata["name"], metadata["namespace"], body,
                                                  _content_type=MERGE_PATCH, _request_timeout=REQUEST_TIMEOUT)
        try:
            retrying(patch, f"status of {metadata['namespace']}/{metadata['name']}")
        except ApiException as error:
            if error.status == 404 or (error.status == 422 and "uid" in str(error.body).lower()):
                raise PodGone(metadata["uid"]) from error
            raise

    def delete_pod_now(self, pod: dict[str, Any]) -> None:
        """What a kubelet does once a Pod's containers are gone: delete it with grace period 0."""
        metadata = pod["metadata"]
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": metadata["uid"]}}
        try:
            retrying(lambda: self.core.delete_namespaced_pod(
                metadata["name"], metadata["namespace"], body=body, grace_period_seconds=0,
                _request_timeout=REQUEST_TIMEOUT), f"delete {metadata['namespace']}/{metadata['name']}",
                statuses=RETRYABLE_STATUSES - {409})
        except ApiException as error:
            if error.status not in (404, 409):  # 409: a different Pod of that name exists now
                raise

    # --- storage (the local provisioner) ------------------------------------------------------------------
    def list_claims(self) -> list[dict[str, Any]]:
        return self._json(self.core.list_persistent_volume_claim_for_all_namespaces).get("items") or []

    def list_volumes(self, label_selector: str) -> list[dict[str, Any]]:
        return self._json(self.core.list_persistent_volume, label_selector=label_selector).get("items") or []

    def create_volume(self, body: dict[str, Any]) -> None:
        try:
            self.core.create_persistent_volume(body, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status != 409:
                raise

    def delete_volume(self, name: str) -> None:
        try:
            self.core.delete_persistent_volume(name, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status != 404:
                raise
