"""`mfl-operator`: run the operator (kopf) with its metrics and liveness endpoints."""

from __future__ import annotations

import argparse
import logging
import os
import socket

import kopf
from prometheus_client import start_http_server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mfl-operator", description=__doc__)
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only these namespaces (repeatable); default: all namespaces",
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
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # one line per watch event and loop is noise at thousands of loops
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    import urllib3

    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # said once in the kubeconfig
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address)
    from . import handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=True,
        liveness_endpoint=args.liveness or None,
        identity=operator_identity(),
    )


def operator_identity() -> str:
    """Who this replica is: the Pod's name (downward API, or the hostname a Pod gets), then the pid.

    kopf's own default asks getpass.getuser(), which raises for a uid without a passwd entry
    (any `runAsUser` a cluster picks); the identity must never depend on the image's /etc/passwd.
    """
    name = os.environ.get("POD_NAME") or socket.gethostname() or "mfl-operator"
    return f"{name}/{os.getpid()}"


if __name__ == "__main__":
    main()
