"""What the operator, the model server and the trainer agree on (docs/contracts.md), in one place.

Each image installs this package; none of the three imports another's code. Every module imports the
standard library alone, so any component can import any of them, the operator's image included, which has
neither client below. Two modules also hold clients, whose libraries are imported only when used:

- ``objectstore``: the artifact store as a folder (``VolumeStore``, standard library only) or an
  S3-compatible bucket (``S3Store``, which needs ``minio`` and its ``urllib3``; ``certifi`` when present).
- ``ledger``: the label ledger in PostgreSQL. Its SQL and partition arithmetic are pure; ``read_labels`` and
  ``drop_expired_partitions`` need psycopg 3 (``psycopg``).

The components that use them (server, sidecar, trainer, CLI) list those libraries in
``requirements/<component>.txt``.
"""
