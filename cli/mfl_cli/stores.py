"""Where the CLI finds a loop's artifacts and labels, from a laptop with nothing mounted.

The artifact store: `--storage DIR` (a mounted PVC, a copy), else an S3 bucket, else the loop's hostPath when
this machine has that folder. The bucket is the loop's `spec.model.storage.s3`, each field overridable by a
flag, so a cluster-internal endpoint can be reached through a port-forward (`--s3-endpoint
http://127.0.0.1:8333`) with the rest taken from the spec; or the flags alone (`--s3-bucket` ...) when there is
no cluster to ask. Credentials: the flags, else MFL_S3_ACCESS_KEY_ID/MFL_S3_SECRET_ACCESS_KEY (kept out of the
shell history and `ps`), else the loop's credentials Secret read through the kubeconfig.

The labels: the loop's PostgreSQL ledger (`spec.model.storage.database.urlSecret`), `--database-url` or
MFL_DATABASE_URL first; without one, the feedback logs in the store.
"""

from __future__ import annotations

import argparse
import atexit
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mfl_cli.kube import CliError, Loops
from mfl_contracts.objectstore import ArtifactStore, S3Settings, check_key

ACCESS_KEY_ENV, SECRET_KEY_ENV = "MFL_S3_ACCESS_KEY_ID", "MFL_S3_SECRET_ACCESS_KEY"
DATABASE_URL_ENV = "MFL_DATABASE_URL"
# The keys of the loop's S3 credentials Secret (the operator reads the same ones).
ACCESS_KEY_KEY, SECRET_KEY_KEY = "accessKeyId", "secretAccessKey"
CREDENTIALS_HINT = f"pass --s3-access-key-id and --s3-secret-access-key (or set {ACCESS_KEY_ENV} and {SECRET_KEY_ENV})"


def add_store_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "artifact store", "default: the loop's spec.model.storage (its S3 bucket, or its hostPath when here)"
    )
    group.add_argument("--storage", metavar="DIR", help="the artifact store as a local folder")
    group.add_argument("--s3-endpoint", metavar="URL", help="e.g. http://127.0.0.1:8333 (a port-forward)")
    group.add_argument("--s3-bucket", metavar="NAME", help="the bucket (default: the loop's)")
    group.add_argument("--s3-prefix", metavar="PREFIX", help="the folder in the bucket (default: the loop's)")
    group.add_argument("--s3-region", metavar="REGION", help="default: the loop's, else the server's")
    group.add_argument("--s3-access-key-id", metavar="ID", help=f"default: ${ACCESS_KEY_ENV}, else the loop's Secret")
    group.add_argument(
        "--s3-secret-access-key", metavar="KEY", help=f"default: ${SECRET_KEY_ENV}, else the loop's Secret"
    )
    group.add_argument("--s3-ca-file", metavar="PEM", help="CA bundle for an https endpoint (default: the loop's)")
    group.add_argument(
        "--s3-insecure-skip-verify", action="store_true", default=None, help="do not verify the endpoint's certificate"
    )


def add_database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help=f"the labels' PostgreSQL (default: ${DATABASE_URL_ENV}, else the loop's database urlSecret)",
    )


def model_storage(loop: dict[str, Any] | None) -> dict[str, Any]:
    return (((loop or {}).get("spec") or {}).get("model") or {}).get("storage") or {}


def s3_settings(
    args: argparse.Namespace, loop: dict[str, Any] | None, loops: Loops | None, env: Mapping[str, str]
) -> S3Settings | None:
    """The bucket the flags and the loop's spec name together; None when neither names one."""
    spec = model_storage(loop).get("s3") or {}
    bucket = _flag(args, "s3_bucket") or spec.get("bucket")
    if not bucket:
        given = [name for name in ("s3_endpoint", "s3_prefix", "s3_access_key_id") if _flag(args, name)]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise CliError(f"{flag} needs --s3-bucket (the loop has no spec.model.storage.s3)")
        return None
    endpoint = _endpoint(_flag(args, "s3_endpoint") or spec.get("endpoint") or "")
    access_key, secret_key = _credentials(args, spec, loop, loops, env)
    prefix = _flag(args, "s3_prefix")
    insecure = _flag(args, "s3_insecure_skip_verify")
    return S3Settings(
        endpoint=endpoint,
        bucket=bucket,
        prefix=_prefix(spec.get("prefix") if prefix is None else prefix),
        region=_flag(args, "s3_region") or spec.get("region") or None,
        access_key=access_key,
        secret_key=secret_key,
        ca_file=_flag(args, "s3_ca_file") or _ca_file(spec.get("caSecret"), loop, loops),
        insecure=bool(spec.get("insecureSkipVerify")) if insecure is None else insecure,
    )


def open_store(
    args: argparse.Namespace, loop: dict[str, Any] | None, loops: Loops | None, host_path: Path | None
) -> ArtifactStore | None:
    """--storage, else the bucket, else the loop's hostPath folder (when it is here); None when none of them."""
    from mfl_contracts.objectstore import S3Store, VolumeStore

    if _flag(args, "storage"):
        return VolumeStore(Path(args.storage))
    settings = s3_settings(args, loop, loops, os.environ)
    if settings is not None:
        return S3Store(settings)
    return VolumeStore(host_path) if host_path else None


def database_url(
    args: argparse.Namespace, loop: dict[str, Any] | None, loops: Loops | None, env: Mapping[str, str]
) -> str | None:
    """The ledger's libpq URL: the flag, the environment, else the loop's urlSecret; None without a ledger."""
    given = _flag(args, "database_url") or env.get(DATABASE_URL_ENV, "").strip()
    if given:
        return given
    ref = (model_storage(loop).get("database") or {}).get("urlSecret")
    if not ref:
        return None
    hint = f"pass --database-url (or set {DATABASE_URL_ENV})"
    return _secret(loop, loops, ref.get("name", ""), ref.get("key", "url"), hint).decode().strip()


# --- helpers -------------------------------------------------------------------------------------------


def _flag(args: argparse.Namespace, name: str) -> Any:
    return getattr(args, name, None)


def _endpoint(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"S3 endpoint {value!r}: expected http://host[:port] or https://host[:port] (--s3-endpoint)")
    return f"{parts.scheme}://{parts.netloc}"


def _prefix(value: str | None) -> str:
    prefix = (value or "").strip().strip("/")
    try:
        return check_key(prefix) if prefix else ""
    except ValueError as error:
        raise CliError(f"S3 prefix {value!r}: {error}") from None


def _credentials(
    args: argparse.Namespace,
    spec: dict[str, Any],
    loop: dict[str, Any] | None,
    loops: Loops | None,
    env: Mapping[str, str],
) -> tuple[str, str]:
    access_key = _flag(args, "s3_access_key_id") or env.get(ACCESS_KEY_ENV, "").strip()
    secret_key = _flag(args, "s3_secret_access_key") or env.get(SECRET_KEY_ENV, "").strip()
    if access_key and secret_key:
        return access_key, secret_key
    if access_key or secret_key:
        raise CliError(f"S3 credentials need both the access key id and the secret access key: {CREDENTIALS_HINT}")
    name = spec.get("credentialsSecret")
    if not name:
        raise CliError(f"no S3 credentials: {CREDENTIALS_HINT}")
    access = _secret(loop, loops, name, ACCESS_KEY_KEY, CREDENTIALS_HINT)
    secret = _secret(loop, loops, name, SECRET_KEY_KEY, CREDENTIALS_HINT)
    return access.decode().strip(), secret.decode().strip()


def _ca_file(ref: dict[str, Any] | None, loop: dict[str, Any] | None, loops: Loops | None) -> str | None:
    """The loop's CA bundle as a file for the S3 client, removed when the command ends."""
    if not ref:
        return None
    pem = _secret(loop, loops, ref.get("name", ""), ref.get("key", "ca.crt"), "pass --s3-ca-file PEM")
    handle, path = tempfile.mkstemp(prefix="mfl-s3-ca-", suffix=".pem")
    with os.fdopen(handle, "wb") as file:
        file.write(pem)
    atexit.register(Path(path).unlink, missing_ok=True)
    return path


def _secret(loop: dict[str, Any] | None, loops: Loops | None, name: str, key: str, hint: str) -> bytes:
    if loops is None or loop is None:
        raise CliError(f"the loop's Secret {name!r} cannot be read offline: {hint}")
    namespace = loop["metadata"]["namespace"]
    try:
        return loops.secret_value(name, namespace, key)
    except CliError as error:
        raise CliError(f"cannot read the loop's Secret {name!r}: {error}; {hint}") from error
