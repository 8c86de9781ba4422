"""The runtime around the core: kopf handlers, the engine, the Kubernetes, Prometheus and webhook clients."""
