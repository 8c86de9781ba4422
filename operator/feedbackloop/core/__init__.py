"""The pure core: decisions over plain data. No I/O, no Kubernetes, kopf, Prometheus client or event loop
(the import contracts in pyproject.toml enforce it for every module put here)."""
