"""The local test bed shared by the e2e tests and `mfl demo`.

A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler built
from Debian's sources), a real Prometheus and an in-process metrics exporter, all on loopback ports
picked at run time so that several test beds can run side by side.
"""

from mfl_testbed.process import TestbedError, TestbedUnavailable

__all__ = ["TestbedError", "TestbedUnavailable"]
