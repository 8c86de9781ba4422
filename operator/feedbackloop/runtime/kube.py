"""The thin edge to the Kubernetes API (the official client, called from worker threads).

Every create is idempotent: names are deterministic, and AlreadyExists means "it is there" once we
have checked that the object is ours (a controller owner reference to this loop).

Fenced (runtime/leader.py explains why): every HTTP request made in a call through the leader's Fence is
sent only with at least leader.MIN_REQUEST_SECONDS of the term left, with its timeout bounded by what is
left, and its answer is refused (NotLeading) when the term ended while it was in flight. Every update and
delete carries, as a precondition, the resourceVersion of the object as read in the same call, before
the write's own check: a standby writes only after this replica's term ended, so a write of ours that
lands after a takeover is refused (409) when the new leader wrote the object since. A 409 on that
precondition (the object changed between our read and our write, e.g. a user's edit) is retried after a
new read, within the term, up to CONFLICT_RETRIES times; a 409 left is raised, and the engine tries again
on its next reconcile.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.util.retry import Retry

from feedbackloop.core import api, resources, sharding
from feedbackloop.runtime import leader, metrics
from feedbackloop.runtime.budget import RequestBudget

# The Accept header of a list of metadata only (meta.k8s.io/v1, Kubernetes >= 1.15).
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
JSON_PATCH = "application/json-patch+json"
log = logging.getLogger(__name__)
DEFAULT_REQUEST_SECONDS = 30.0  # no request of the engine's waits longer, leading or not
CONFLICT_RETRIES = 3
T = TypeVar("T")


def load_config(kubeconfig: str | None = None) -> None:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]


class NotOurs(RuntimeError):
    """An object with the name we need exists and another controller owns it."""


class EngineUnavailable(RuntimeError):
    """The kind a retraining engine needs cannot be used: its CRD is not installed, or RBAC forbids it."""


DASK_MISSING = (
    "engine Dask needs the dask-kubernetes operator: its DaskJob CRD is not installed "
    "(kubernetes.dask.org/v1 daskjobs); install it, or set spec.retraining.engine: Job"
)


def dask_unavailable(error: ApiException, verb: str) -> EngineUnavailable | None:
    """What a failed DaskJob call means for the user, when it is not about the one object: a CRD the API
    server does not serve, or the operator's RBAC."""
    if error.status == 404:
        return EngineUnavailable(DASK_MISSING)
    if error.status == 403:
        return EngineUnavailable(
            f"engine Dask: the operator may not {verb} DaskJobs (kubernetes.dask.org daskjobs; RBAC "
            f"forbidden): grant its ClusterRole or Role get, list, create and delete on them ({error.reason})"
        )
    return None


class KubeAPI(Protocol):
    """What the engine needs of the Kubernetes API (Kube below; tests use an in-memory fake)."""

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], known_version: str | None = None
    ) -> Any: ...
    def event(self, loop: dict[str, Any], type_: str, reason: str, message: str) -> None: ...
    def ensure_signing_secret(self, loop: dict[str, Any]) -> None: ...
    def ensure_service(self, loop: dict[str, Any], body: dict[str, Any]) -> None: ...
    def ensure_deployment(self, loop: dict[str, Any], body: dict[str, Any]) -> None: ...
    def delete_deployment(self, namespace: str, name: str) -> None: ...
    def create_job(self, loop: dict[str, Any], body: dict[str, Any]) -> None: ...
    def delete_job(self, namespace: str, name: str) -> None: ...
    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def job_pod_termination(self, namespace: str, job_name: str) -> tuple[str, str]: ...
    def create_dask_job(self, loop: dict[str, Any], body: dict[str, Any]) -> None: ...
    def delete_dask_job(self, namespace: str, name: str) -> None: ...
    def read_dask_job(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def dask_runner_termination(self, namespace: str, name: str) -> tuple[str, str]: ...
    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...
    def pod_log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str: ...
    def set_route_weights(self, loop: dict[str, Any], route_name: str, canary_weight: int) -> None: ...
    def read_secret_key(self, namespace: str, name: str, key: str) -> tuple[str, dict[str, str]]: ...
    def read_secret_metadata(self, namespace: str, name: str) -> tuple[dict[str, str], list[str]] | None: ...
    def loop_gone(self, namespace: str, name: str, uid: str | None) -> bool: ...
    def ack_shard(self, namespace: str, name: str, version: str) -> str: ...
    def adopt_deployments(self, namespace: str, loop_label: str, shard: str) -> list[dict[str, Any]]: ...


def fence_requests(api_client: client.ApiClient, budget: RequestBudget | None = None) -> client.ApiClient:
    """Every request of `api_client` checked against the leader's term of the call it is made in
    (leader.TERM, set by the Fence): not sent with less than MIN_REQUEST_SECONDS left, its timeout at most
    what is left (DEFAULT_REQUEST_SECONDS outside a term), and its answer refused when the term ended while
    it was in flight. With a `budget`, each request first waits for its token (runtime/budget.py); a wait that
    would leave less than MIN_REQUEST_SECONDS of the term is not waited: the request is not sent. The hook is
    the REST client's `request`, the last step before urllib3 sends (called with keyword arguments by every
    client version this project supports)."""
    rest = api_client.rest_client
    send: Callable[..., Any] = rest.request

    def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        term = leader.TERM.get()
        if budget is not None:
            wait = budget.reserve()
            if wait > 0:
                if term is not None and term.remaining() - wait < leader.MIN_REQUEST_SECONDS:
                    raise leader.NotLeading(f"{method} {url}: not sent, its request budget's wait ({wait:.2f}s) "
                                            "outlives the leader's term")  # fmt: skip
                metrics.API_THROTTLED_SECONDS.inc(wait)
                time.sleep(wait)
        timeout = kwargs.get("_request_timeout") or DEFAULT_REQUEST_SECONDS
        if term is not None:
            left = term.remaining()
            if left < leader.MIN_REQUEST_SECONDS:
                raise leader.NotLeading(f"{method} {url}: not sent, {max(left, 0.0):.2f}s left of the leader's term")
            timeout = min(timeout, left) if isinstance(timeout, int | float) else (min(timeout[0], left), left)
        kwargs["_request_timeout"] = timeout
        response = send(method, url, *args, **kwargs)
        if term is not None and term.remaining() <= 0:
            raise leader.NotLeading(f"{method} {url}: answered after the leader's term ended; not used")
        return response

    rest.request = request  # type: ignore[method-assign]
    return api_client


def resource_version(obj: Any) -> str:
    """An object's resourceVersion, from a dict (the API's JSON) or the client's model."""
    if isinstance(obj, dict):
        return str((obj.get("metadata") or {}).get("resourceVersion") or "")
    metadata = getattr(obj, "metadata", None)
    return str(getattr(metadata, "resource_version", None) or "")


def with_precondition(read: Callable[[], str | None], write: Callable[[str], T]) -> T | None:
    """`write(resourceVersion)` with the version `read()` returned just before (None: the object is gone,
    nothing to write). On 409 (it changed between the two) read and write again, at most CONFLICT_RETRIES
    times in all; a 409 left is raised."""
    for attempt in range(1, CONFLICT_RETRIES + 1):
        version = read()
        if version is None:
            return None
        try:
            return write(version)
        except ApiException as error:
            if error.status != 409 or attempt == CONFLICT_RETRIES:
                raise
            log.info("the object changed since it was read (attempt %d), reading it again: %s", attempt, error.reason)
    return None


def if_found(call: Callable[[], T]) -> T | None:
    """The call's result, or None on 404."""
    try:
        return call()
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def delete_options(version: str) -> client.V1DeleteOptions:
    """Background (the dependents go with it: the API's default for Jobs would orphan their Pods), and only
    the version read."""
    return client.V1DeleteOptions(
        propagation_policy="Background", preconditions=client.V1Preconditions(resource_version=version)
    )


class Kube:
    def __init__(self, budget: RequestBudget | None = None) -> None:
        """`budget`: the client-side request budget of this client's calls (None: unbounded)."""
        configuration = client.Configuration.get_default_copy()
        # Connection failures are re-sent (the request never reached the server), read timeouts are not: under an
        # overloaded API server urllib3's default re-sent every timed-out request up to 3 times, adding to the
        # load; the engine tries again at the loop's next reconcile.
        configuration.retries = Retry(total=2, connect=2, read=0, status=0, other=0)
        api_client = fence_requests(client.ApiClient(configuration), budget)
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.host = socket.gethostname()
        self._metadata_lists = True  # lists of metadata only, while this client can ask for them

    # --- status and events ------------------------------------------------------------------------
    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], known_version: str | None = None
    ) -> dict[str, Any]:
        """Merge-patch the status subresource (null deletes a key; lists are replaced whole) carrying
        metadata.resourceVersion, a precondition. The first try carries `known_version`, the version the
        caller knows to be current (its watch, or its own last write): no read on the hot path. Without one,
        or on a 409, the loop is read and the patch sent on the version just read."""
        known = [known_version]

        def read() -> str:
            if known[0]:
                version, known[0] = known[0], None
                return version
            loop = self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)
            return resource_version(loop)

        def write(version: str) -> dict[str, Any]:
            patch = {"metadata": {"resourceVersion": version}, "status": status}
            written = self.custom.patch_namespaced_custom_object_status(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name, patch
            )
            return cast(dict[str, Any], written)

        return with_precondition(read, write) or {}

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
    @staticmethod
    def _create_or_check(
        create: Callable[[str, Any], Any], read: Callable[[str, str], Any], namespace: str, body: dict[str, Any],
        loop_uid: str,
    ) -> str:  # fmt: skip
        """Create `body`, or check that the object of its name is this loop's: its resourceVersion either way."""
        try:
            return resource_version(create(namespace, body))
        except ApiException as error:
            if error.status != 409:
                raise
        return owned(read(body["metadata"]["name"], namespace), body["kind"], namespace, loop_uid)

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
        namespace, name, uid = loop["metadata"]["namespace"], body["metadata"]["name"], loop["metadata"]["uid"]
        checked = [
            self._create_or_check(
                self.apps.create_namespaced_deployment, self.apps.read_namespaced_deployment, namespace, body, uid
            )
        ]
        # Converge replicas, labels and the pod template; a no-op patch does not bump the generation. The pod
        # spec is replaced whole ("$patch": "replace"), not merged: a strategic merge keeps containers, env
        # variables and nodeSelector keys the spec no longer has (a removed feedback sidecar would stay).
        template = body["spec"]["template"]
        spec = {**body["spec"], "template": {**template, "spec": {**template["spec"], "$patch": "replace"}}}

        def read() -> str | None:
            if checked:
                return checked.pop() or ""  # the version just created or checked
            existing = if_found(lambda: self.apps.read_namespaced_deployment(name, namespace))
            return None if existing is None else owned(existing, "Deployment", namespace, uid)

        def write(version: str) -> None:
            metadata = {"labels": body["metadata"]["labels"], "annotations": body["metadata"].get("annotations") or {}}
            if version:
                metadata["resourceVersion"] = version
            self.apps.patch_namespaced_deployment(name, namespace, {"metadata": metadata, "spec": spec})

        with_precondition(read, write)

    def delete_deployment(self, namespace: str, name: str) -> None:
        def read() -> str | None:
            found = if_found(lambda: self.apps.read_namespaced_deployment(name, namespace))
            return None if found is None else resource_version(found)

        def delete(version: str) -> None:
            if_found(lambda: self.apps.delete_namespaced_deployment(name, namespace, body=delete_options(version)))

        with_precondition(read, delete)

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
        def read() -> str | None:
            found = if_found(lambda: self.batch.read_namespaced_job(name, namespace))
            return None if found is None else resource_version(found)

        def delete(version: str) -> None:
            if_found(lambda: self.batch.delete_namespaced_job(name, namespace, body=delete_options(version)))

        with_precondition(read, delete)

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        job = if_found(lambda: self.batch.read_namespaced_job(name, namespace))
        return None if job is None else job.to_dict()

    def job_pod_termination(self, namespace: str, job_name: str) -> tuple[str, str]:
        """(termination message, reason) of the Job's newest finished Pod."""
        return newest_termination(self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items)

    # --- training on Dask: DaskJobs (kubernetes.dask.org/v1), a custom resource that may not be installed ----
    def _dask(self, namespace: str) -> tuple[str, str, str, str]:
        return (resources.DASK_GROUP, resources.DASK_VERSION, namespace, resources.DASK_PLURAL)

    def create_dask_job(self, loop: dict[str, Any], body: dict[str, Any]) -> None:
        """Create the DaskJob, or check that the one of its name is this loop's; EngineUnavailable when the API
        server does not serve DaskJobs or the operator may not create them."""
        namespace = loop["metadata"]["namespace"]
        try:
            self.custom.create_namespaced_custom_object(*self._dask(namespace), body)
            return
        except ApiException as error:
            if error.status != 409:
                raise dask_unavailable(error, "create") or error from error
        existing = self.custom.get_namespaced_custom_object(*self._dask(namespace), body["metadata"]["name"])
        owned_dict(cast(dict[str, Any], existing), resources.DASK_KIND, namespace, loop["metadata"]["uid"])

    def read_dask_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The DaskJob, None when it does not exist; EngineUnavailable when DaskJobs are not served (a 404 of
        the object and of the kind's list alike) or not readable."""
        try:
            return cast(dict[str, Any], self.custom.get_namespaced_custom_object(*self._dask(namespace), name))
        except ApiException as error:
            if error.status == 403:
                raise dask_unavailable(error, "read") or error from error
            if error.status != 404:
                raise
        try:  # the object, or the whole kind? A list of a kind the API server serves is never a 404.
            self.custom.list_namespaced_custom_object(*self._dask(namespace), limit=1)
        except ApiException as error:
            raise dask_unavailable(error, "list") or error from error
        return None

    def delete_dask_job(self, namespace: str, name: str) -> None:
        """Delete the DaskJob (its cluster and runner Pod go with it); nothing when it, or its kind, is absent."""

        def read() -> str | None:
            found = if_found(lambda: self.custom.get_namespaced_custom_object(*self._dask(namespace), name))
            return None if found is None else resource_version(found)

        def delete(version: str) -> None:
            options = delete_options(version)
            if_found(lambda: self.custom.delete_namespaced_custom_object(*self._dask(namespace), name, body=options))

        with_precondition(read, delete)

    def dask_runner_termination(self, namespace: str, name: str) -> tuple[str, str]:
        """(termination message, reason) of the DaskJob's runner Pod (`<name>-runner`), as for a Job's Pod."""
        selector = f"dask.org/cluster-name={name},dask.org/component=job-runner"
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        runner = [p for p in pods if p.metadata and p.metadata.name == resources.dask_runner_pod(name)]
        return newest_termination(runner or pods)

    # --- serving Pods -----------------------------------------------------------------------------
    def adopt_deployments(self, namespace: str, loop_label: str, shard: str) -> list[dict[str, Any]]:
        """Sharding: a loop's Deployments brought into this replica's watch (our shard label on each, a merge patch
        of that label only), as they are now (camelCase JSON, as the watch serves them). A quorum read: a list
        NotOlderThan the loop's resourceVersion is refused by a 1.20 API server whose Deployment cache has not seen
        that revision (504 Too large resource version, when no Deployment changed since)."""
        selector = f"app.kubernetes.io/managed-by={resources.MANAGED_BY},{resources.LOOP_LABEL}={loop_label}"
        response: Any = self.apps.list_namespaced_deployment(namespace, label_selector=selector, _preload_content=False)
        adopted = []
        for item in json.loads(response.data).get("items") or []:
            meta = item["metadata"]
            if (meta.get("labels") or {}).get(sharding.SHARD_LABEL) != shard:
                patch = {"metadata": {"labels": {sharding.SHARD_LABEL: shard}}}
                written: Any = self.apps.patch_namespaced_deployment(
                    meta["name"], namespace, patch, _preload_content=False
                )
                item = json.loads(written.data)
            adopted.append(item)
        return adopted

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """Pods as the API serves them (camelCase JSON, like the watched Deployments), not the client's models;
        from the API server's watch cache (resourceVersion 0: they only explain a Deployment that is not ready)."""
        response: Any = self.core.list_namespaced_pod(
            namespace, label_selector=label_selector, resource_version="0", _preload_content=False
        )
        return list(json.loads(response.data).get("items") or [])

    def pod_log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
        """The last `lines` lines of a container's log (at most 16 KiB)."""
        return str(
            self.core.read_namespaced_pod_log(pod, namespace, container=container, tail_lines=lines, limit_bytes=16384)
        )

    # --- traffic routing --------------------------------------------------------------------------
    def set_route_weights(self, loop: dict[str, Any], route_name: str, canary_weight: int) -> None:
        namespace = loop["metadata"]["namespace"]
        where = ("gateway.networking.k8s.io", "v1", namespace, "httproutes", route_name)
        read_route: list[dict[str, Any]] = []

        def read() -> str:
            read_route[:] = [cast(dict[str, Any], self.custom.get_namespaced_custom_object(*where))]
            return resource_version(read_route[0])

        def write(version: str) -> None:
            patch = resources.http_route_weights(read_route[0], loop["metadata"]["name"], canary_weight)
            self.custom.patch_namespaced_custom_object(*where, {**patch, "metadata": {"resourceVersion": version}})

        with_precondition(read, write)

    def read_secret_key(self, namespace: str, name: str, key: str) -> tuple[str, dict[str, str]]:
        """A key's value, and the Secret's annotations (which say where a token may be sent)."""
        secret = self.core.read_namespaced_secret(name, namespace)
        data = (secret.data or {}).get(key)
        if data is None:
            raise KeyError(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(data).decode(), dict((secret.metadata.annotations if secret.metadata else None) or {})

    def read_secret_metadata(self, namespace: str, name: str) -> tuple[dict[str, str], list[str]] | None:
        """A Secret's annotations and key names, not its values (None when it does not exist): whether the
        object store keys it holds may go where a loop's Pods would send them."""
        secret = if_found(lambda: self.core.read_namespaced_secret(name, namespace))
        if secret is None:
            return None
        return dict((secret.metadata.annotations if secret.metadata else None) or {}), sorted(secret.data or {})

    # --- the loops themselves: is one really gone; sharding (core/sharding.py) --------------------------
    def loop_gone(self, namespace: str, name: str, uid: str | None) -> bool:
        """Whether the loop was really deleted (a watch's DELETED also means "left this replica's label
        selector"): 404, being deleted, or another object of its name since (another uid)."""
        found = if_found(
            lambda: self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)
        )
        if found is None:
            return True
        metadata = cast(dict[str, Any], found).get("metadata") or {}
        return bool(metadata.get("deletionTimestamp")) or bool(uid and metadata.get("uid") != uid)

    def ack_shard(self, namespace: str, name: str, version: str) -> str:
        """The owner lets a drained loop go: both shard labels removed in one merge patch, on the version
        whose labels asked for it (a 409 when it changed since). Its new resourceVersion."""
        patch = {"metadata": {"resourceVersion": version, "labels": sharding.ACK_LABELS}}
        written = self.custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name, patch)
        return resource_version(written)

    def label_loop(
        self, namespace: str, name: str, version: str, labels: dict[str, str | None], listed: dict[str, str]
    ) -> str:
        """The coordinator's move, on the labels it listed (a JSON patch's test: 422 when they changed since); a loop
        that had no labels, on the version it listed (a merge patch: 409 when it changed)."""
        call = functools.partial(self.custom.patch_namespaced_custom_object, api.GROUP, api.VERSION, namespace)
        if not listed:
            merge = {"metadata": {"resourceVersion": version, "labels": labels}}
            return resource_version(call(api.PLURAL, name, merge))
        patch = sharding.label_patch(listed, labels)
        try:
            written = call(api.PLURAL, name, patch, _content_type=JSON_PATCH)
        except TypeError:  # no _content_type in this client version: it sends a list as a JSON patch itself
            written = call(api.PLURAL, name, patch)
        return resource_version(written)

    def list_loop_labels(self, namespaces: list[str]) -> list[tuple[str, str, dict[str, str], str]]:
        """(namespace, name, labels, resourceVersion) of every loop in `namespaces` ([]: all), in pages of
        metadata only (PartialObjectMetadataList): the coordinator lists the fleet every round, and a loop's
        spec and status are most of its bytes (a full list of 300 loops took the API server ~4 s under load).
        From the API server's watch cache (resourceVersion 0), not a quorum read of every loop from etcd each
        round: a list a moment old is enough, every move it plans is written on the labels (or the version) it
        listed, so a loop changed since is skipped until the next round. A client too old to set a request's
        headers (kubernetes < 35) lists whole objects."""
        found: list[tuple[str, str, dict[str, str], str]] = []
        for namespace in namespaces or [""]:
            token: str | None = None
            while True:  # a continued page names no resourceVersion (the token carries the list's)
                page = self._loop_page(
                    namespace, {"limit": 500, **({"_continue": token} if token else {"resource_version": "0"})}
                )
                for item in page.get("items") or []:
                    meta = item.get("metadata") or {}
                    found.append(
                        (meta["namespace"], meta["name"], dict(meta.get("labels") or {}), resource_version(item))
                    )
                token = (page.get("metadata") or {}).get("continue") or None
                if not token:
                    break
        return found

    def _loop_page(self, namespace: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        call: Callable[..., Any]
        if namespace:
            call = functools.partial(
                self.custom.list_namespaced_custom_object, api.GROUP, api.VERSION, namespace, api.PLURAL
            )
        else:
            call = functools.partial(self.custom.list_cluster_custom_object, api.GROUP, api.VERSION, api.PLURAL)
        if self._metadata_lists:
            try:
                return cast(dict[str, Any], call(**kwargs, _headers={"Accept": METADATA_ONLY}))
            except TypeError:  # no _headers in this client version
                self._metadata_lists = False
        return cast(dict[str, Any], call(**kwargs))

    def list_replica_leases(self, namespace: str) -> list[dict[str, Any]]:
        selector = f"{sharding.REPLICA_LEASE_LABEL}=true"
        page = cast(
            dict[str, Any],
            self.custom.list_namespaced_custom_object(
                "coordination.k8s.io", "v1", namespace, "leases", label_selector=selector
            ),
        )
        return list(page.get("items") or [])

    def delete_lease(self, namespace: str, name: str, version: str) -> None:
        """A taken replica Lease none of whose loops is left (404: gone already; 409: written since, kept)."""
        if_found(
            lambda: self.custom.delete_namespaced_custom_object(
                "coordination.k8s.io", "v1", namespace, "leases", name, body=delete_options(version)
            )
        )


def newest_termination(pods: list[Any]) -> tuple[str, str]:
    """(termination message, "<reason> (exit code <n>)") of the newest terminated container of `pods` (the
    client's models); ("", "") when none has ended."""
    finished = []
    for pod in pods:
        for status in (pod.status.container_statuses if pod.status else None) or []:
            if status.state and status.state.terminated:
                terminated = status.state.terminated
                finished.append((terminated.finished_at or datetime.min.replace(tzinfo=UTC), terminated))
    if not finished:
        return "", ""
    terminated = max(finished, key=lambda item: item[0])[1]
    return (terminated.message or "").strip(), f"{terminated.reason} (exit code {terminated.exit_code})"


def owned_dict(existing: dict[str, Any], kind: str, namespace: str, loop_uid: str) -> str:
    """owned() of an object as the API serves it (a custom object's JSON)."""
    metadata = existing.get("metadata") or {}
    owners = metadata.get("ownerReferences") or []
    if not any(o.get("uid") == loop_uid and o.get("controller") for o in owners):
        name = metadata.get("name", "?")
        raise NotOurs(f"{kind} {namespace}/{name} exists and is not owned by this loop; rename or delete it")
    return resource_version(existing)


def owned(existing: Any, kind: str, namespace: str, loop_uid: str) -> str:
    """The resourceVersion of `existing` when this loop controls it (a controller owner reference); NotOurs
    otherwise."""
    metadata = existing.metadata
    owners = (metadata.owner_references if metadata else None) or []
    if not any(o.uid == loop_uid and o.controller for o in owners):
        name = metadata.name if metadata else "?"
        raise NotOurs(f"{kind} {namespace}/{name} exists and is not owned by this loop; rename or delete it")
    return resource_version(existing)
