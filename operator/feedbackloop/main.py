"""`mfl-operator`: run the operator (kopf) with its metrics and liveness endpoints."""

from __future__ import annotations

import argparse
import logging
import os
import socket

import kopf
from kopf._core.engines.peering import Identity  # a NewType of str that kopf does not re-export
from prometheus_client import start_http_server

from feedbackloop.core.text import inert


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mfl-operator", description=__doc__)
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only these namespaces (repeatable; also $MFL_WATCH_NAMESPACES, comma-separated); "
        "default: all namespaces",
    )
    parser.add_argument("--kubeconfig", help="default: in-cluster config, then $KUBECONFIG or ~/.kube/config")
    parser.add_argument("--metrics-address", default=os.environ.get("MFL_METRICS_ADDRESS", "0.0.0.0"))
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("MFL_METRICS_PORT", "8000")))
    parser.add_argument(
        "--liveness",
        default=os.environ.get("MFL_LIVENESS", "http://0.0.0.0:8080/healthz"),
        help="kopf liveness endpoint URL ('' to disable)",
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    handler = logging.StreamHandler()
    handler.setFormatter(InertFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    if not args.verbose:  # one line per watch event and loop is noise at thousands of loops
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    import urllib3

    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # said once in the kubeconfig
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address)
    from feedbackloop.runtime import handlers  # noqa: F401  (registers the handlers)

    namespaces = watched_namespaces(args.namespace, os.environ.get("MFL_WATCH_NAMESPACES", ""))
    settings = kopf.OperatorSettings()
    # Watching listed namespaces is the namespace-scoped install: its RBAC has no cluster-wide list of
    # namespaces or CRDs, so kopf serves exactly these names and the CRDs present at start (no scanning,
    # no Forbidden warnings). A namespace pattern needs the cluster-wide install.
    settings.scanning.disabled = bool(namespaces)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        settings=settings,
        standalone=True,
        liveness_endpoint=args.liveness or None,
        identity=Identity(operator_identity()),
    )


class InertFormatter(logging.Formatter):
    """Log lines quote tenants' text (a Prometheus error, a webhook's answer, a Pod's message): made inert
    (core/text.py) as in status, so `kubectl logs` in an admin's terminal runs no escape sequence."""

    def format(self, record: logging.LogRecord) -> str:
        return inert(super().format(record), multiline=True)


def watched_namespaces(flags: list[str], env: str) -> list[str]:
    """The --namespace flags, else $MFL_WATCH_NAMESPACES (comma or space separated); [] = all namespaces."""
    names = flags or env.replace(",", " ").split()
    return sorted(set(names))


def operator_identity() -> str:
    """Who this replica is: the Pod's name (downward API, or the hostname a Pod gets), then the pid.

    kopf's own default asks getpass.getuser(), which raises for a uid without a passwd entry
    (any `runAsUser` a cluster picks); the identity must never depend on the image's /etc/passwd.
    """
    name = os.environ.get("POD_NAME") or socket.gethostname() or "mfl-operator"
    return f"{name}/{os.getpid()}"


if __name__ == "__main__":
    main()
