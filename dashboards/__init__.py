"""Dashboards as code for manifests/monitoring/ (not shipped in any image): `python -m dashboards.generate`."""
