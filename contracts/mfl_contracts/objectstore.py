"""The artifact store behind `contracts/mfl_contracts/storage.py`'s layout: a folder (volume mode) or an
S3-compatible bucket (s3 mode), with one interface, so the server, the fetch init container, the trainer
and the CLI read and write versions and logs the same way in both modes.

Keys are relative to the store's root and use `/` separators (`churn/versions/3/metadata.json`). A key
never starts with `/` nor holds a `..` segment, so it cannot leave the root of a folder or a prefix.

The S3 client is minio (pure Python on urllib3; boto3 would add ~100 MB to the sidecar image), imported
only by S3Store: volume mode never needs it. Every failure is a StoreError whose message names the store,
the key or operation, and the reason (AccessDenied, NoSuchBucket, unreachable: connection refused...).
"""

from __future__ import annotations

import io
import os
import re
import secrets
import urllib.parse
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from minio import Minio

# Staging files of VolumeStore (written, then renamed into place): never listed.
TEMP_PREFIX = ".tmp-"
# check() writes and removes an object here (under the store's root); never listed.
PROBE_FOLDER = ".mfl-probe"
# Short: a store that does not answer must turn into a clear error quickly (readiness, init container).
CONNECT_TIMEOUT_SECONDS = 5.0
# Per socket read (not per request), so a large object is fine; a hung server fails within 2 x 10 s.
READ_TIMEOUT_SECONDS = 10.0
CHUNK_BYTES = 1 << 20
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
TRUE_VALUES, FALSE_VALUES = {"true", "1", "yes"}, {"false", "0", "no", ""}


class StoreError(Exception):
    """The store refused or failed an operation; the message names the store, the key and the reason."""


class NotFound(StoreError):
    """The key does not exist."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's root
    size: int
    modified: float  # seconds since the epoch


@runtime_checkable
class ArtifactStore(Protocol):
    description: str  # "s3://bucket/prefix at http://host:8333" or "/var/lib/mfl/artifacts"

    def get(self, key: str) -> bytes: ...  # NotFound if missing

    def put(self, key: str, data: bytes) -> None: ...

    def list(self, prefix: str) -> list[ObjectInfo]: ...  # recursive, sorted by key

    def delete(self, keys: Iterable[str]) -> None: ...  # missing keys are fine

    def download(self, prefix: str, dest: Path) -> int: ...

    def upload(self, folder: Path, prefix: str, last: str | None = None) -> int: ...

    def check(self) -> None: ...


# ---- keys ------------------------------------------------------------------------------------


def check_key(key: str) -> str:
    """`key` if it is a safe object key (relative, no `..`, `.` or empty segments), else ValueError."""
    if not key or key.startswith("/") or key.endswith("/") or "\\" in key or "\0" in key:
        raise ValueError(f"invalid key {key!r}: not a relative path of '/'-separated names")
    if any(segment in {"", ".", ".."} for segment in key.split("/")):
        raise ValueError(f"invalid key {key!r}: empty, '.' or '..' segment")
    return key


def check_prefix(prefix: str) -> str:
    """A list prefix: empty, or a key's beginning (may end with `/`, may end mid-name)."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def folder_prefix(prefix: str) -> str:
    """download/upload treat `prefix` as a folder: "a/3" means "a/3/", never "a/30/"."""
    check_prefix(prefix)
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def _folder_files(folder: Path, last: str | None) -> list[tuple[str, Path]]:
    """(relative key, path) of every file under `folder`, sorted, with `last` (a relative path) at the end."""
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    files = sorted(
        (path.relative_to(folder).as_posix(), path)
        for path in folder.rglob("*")
        if path.is_file() and not path.name.startswith(TEMP_PREFIX)
    )
    if last is None:
        return files
    ordered = [item for item in files if item[0] != last]
    if len(ordered) == len(files):
        raise FileNotFoundError(f"{folder / last} does not exist (to upload last)")
    return ordered + [item for item in files if item[0] == last]


def _destination(description: str, dest: Path, prefix: str, key: str) -> Path:
    """Where download() writes `key`: dest/<key without prefix>; a stored key that would leave `dest`
    (S3 allows `..` in keys) is refused."""
    try:
        return Path(dest) / check_key(key[len(prefix) :])
    except ValueError as error:
        raise StoreError(f"{description}: refusing to download {key!r}: {error}") from None


def _write_file(path: Path, chunks: Iterable[bytes]) -> None:
    """Write through a staging file + rename: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{TEMP_PREFIX}{path.name}-{secrets.token_hex(4)}")
    try:
        with temp.open("wb") as file:
            for chunk in chunks:
                file.write(chunk)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


# ---- a folder ----------------------------------------------------------------------------------


class VolumeStore:
    """The store over a folder (a RWX volume): put = staging file + rename, so readers see whole files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.description = str(self.root)

    def __repr__(self) -> str:
        return f"VolumeStore({self.description!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _error(self, action: str, key: str, error: OSError) -> StoreError:
        return StoreError(f"{self.description}: cannot {action} {key}: {error.strerror or error}")

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
            raise NotFound(f"{self.description}: {key} does not exist") from error
        except OSError as error:
            raise self._error("get", key, error) from error

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            try:
                _write_file(path, [data])
            except FileNotFoundError:
                _write_file(path, [data])  # delete() pruned the empty folder between mkdir and open
        except OSError as error:
            raise self._error("put", key, error) from error

    def list(self, prefix: str) -> list[ObjectInfo]:
        check_prefix(prefix)
        # Walk only the deepest folder the prefix names; the rest of the prefix filters names.
        base = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        return sorted((info for info in self._walk(base) if info.key.startswith(prefix)), key=lambda info: info.key)

    def _walk(self, base: Path) -> Iterator[ObjectInfo]:
        def fail(error: OSError) -> None:
            if not isinstance(error, FileNotFoundError | NotADirectoryError):
                raise self._error("list", str(base), error) from error

        for folder, _, names in os.walk(base, onerror=fail):
            for name in names:
                if name.startswith(TEMP_PREFIX):
                    continue
                path = Path(folder, name)
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue  # deleted while we walked
                yield ObjectInfo(path.relative_to(self.root).as_posix(), stat.st_size, stat.st_mtime)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            path = self._path(key)
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                raise self._error("delete", key, error) from error
            self._prune(path.parent)

    def _prune(self, folder: Path) -> None:
        """Remove folders left empty up to the root, as a bucket has no empty folders (old log days)."""
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or gone): stop
            folder = folder.parent

    def download(self, prefix: str, dest: Path) -> int:
        prefix = folder_prefix(prefix)
        infos = self.list(prefix)
        for info in infos:
            path = _destination(self.description, dest, prefix, info.key)
            try:
                with self._path(info.key).open("rb") as source:
                    _write_file(path, iter(lambda: source.read(CHUNK_BYTES), b""))
            except FileNotFoundError as error:
                raise NotFound(f"{self.description}: {info.key} vanished while downloading {prefix}") from error
            except OSError as error:
                raise self._error("download", info.key, error) from error
        return len(infos)

    def upload(self, folder: Path, prefix: str, last: str | None = None) -> int:
        prefix = folder_prefix(prefix)
        try:
            files = _folder_files(Path(folder), last)
        except OSError as error:
            raise StoreError(f"{self.description}: cannot upload {folder}: {error}") from error
        for rest, path in files:
            self._upload_file(path, prefix + rest)
        return len(files)

    def _upload_file(self, path: Path, key: str) -> None:
        target = self._path(key)
        try:
            with path.open("rb") as source:
                _write_file(target, iter(lambda: source.read(CHUNK_BYTES), b""))
        except OSError as error:
            raise self._error("upload", key, error) from error

    def check(self) -> None:
        if not self.root.is_dir():
            raise StoreError(f"{self.description}: not a folder (is the volume mounted?)")
        probe = self.root / f"{TEMP_PREFIX}probe-{secrets.token_hex(4)}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise StoreError(f"{self.description}: cannot write: {error.strerror or error}") from error


# ---- an S3-compatible bucket --------------------------------------------------------------------


@dataclass(frozen=True)
class S3Settings:
    endpoint: str  # http://host:port or https://host[:port]
    bucket: str
    prefix: str = ""  # no leading or trailing "/"
    region: str | None = None
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    ca_file: str | None = None  # PEM bundle that verifies the endpoint's certificate
    insecure: bool = False  # skip TLS verification

    @property
    def description(self) -> str:
        where = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return f"s3://{where} at {self.endpoint}"


def s3_settings_from_env(env: Mapping[str, str]) -> S3Settings | None:
    """The MFL_S3_* variables (design: env contract); None when MFL_S3_BUCKET is unset or empty.
    ValueError names the variable when a value is wrong."""
    bucket = env.get("MFL_S3_BUCKET", "").strip()
    if not bucket:
        return None
    if not BUCKET_NAME.match(bucket) or ".." in bucket:
        raise ValueError(f"MFL_S3_BUCKET={bucket!r} is not a bucket name (3-63 of a-z, 0-9, '.', '-')")
    endpoint = _endpoint(env.get("MFL_S3_ENDPOINT", "").strip())
    prefix = env.get("MFL_S3_PREFIX", "").strip()
    if prefix:
        try:
            check_key(prefix)
        except ValueError as error:
            raise ValueError(f"MFL_S3_PREFIX={prefix!r}: {error} (no leading or trailing '/')") from None
    access_key = env.get("MFL_S3_ACCESS_KEY_ID", "").strip()
    secret_key = env.get("MFL_S3_SECRET_ACCESS_KEY", "").strip()
    if not access_key or not secret_key:
        raise ValueError("MFL_S3_ACCESS_KEY_ID and MFL_S3_SECRET_ACCESS_KEY are required with MFL_S3_BUCKET")
    ca_file = env.get("MFL_S3_CA_FILE", "").strip() or None
    if ca_file is not None and not Path(ca_file).is_file():
        raise ValueError(f"MFL_S3_CA_FILE={ca_file!r} is not a file")
    insecure = env.get("MFL_S3_INSECURE_SKIP_VERIFY", "").strip().lower()
    if insecure not in TRUE_VALUES | FALSE_VALUES:
        raise ValueError(f"MFL_S3_INSECURE_SKIP_VERIFY={insecure!r}: expected true or false")
    return S3Settings(
        endpoint=endpoint,
        bucket=bucket,
        prefix=prefix,
        region=env.get("MFL_S3_REGION", "").strip() or None,
        access_key=access_key,
        secret_key=secret_key,
        ca_file=ca_file,
        insecure=insecure in TRUE_VALUES,
    )


def _endpoint(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.path.strip("/") or parts.query:
        raise ValueError(f"MFL_S3_ENDPOINT={value!r}: expected http://host[:port] or https://host[:port]")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as error:
        raise ValueError(f"MFL_S3_ENDPOINT={value!r}: {error}") from None
    return f"{parts.scheme}://{parts.netloc}"


def store_from_env(env: Mapping[str, str], root: Path) -> ArtifactStore:
    """S3Store when MFL_S3_BUCKET is set, else VolumeStore(root)."""
    settings = s3_settings_from_env(env)
    return S3Store(settings) if settings is not None else VolumeStore(root)


class S3Store:
    """The store over `s3://bucket/prefix`: keys are relative to the prefix."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.description = settings.description
        self.bucket = settings.bucket
        self._root = f"{settings.prefix}/" if settings.prefix else ""
        self._client = _client(settings)

    def __repr__(self) -> str:
        return f"S3Store({self.description!r})"

    def _key(self, key: str) -> str:
        return self._root + check_key(key)

    def get(self, key: str) -> bytes:
        name, response = self._key(key), None
        try:
            response = self._client.get_object(self.bucket, name)
            return bytes(response.read())
        except Exception as error:
            raise self._error("get", key, error) from error
        finally:
            if response is not None:
                response.close()
                response.release_conn()

    def put(self, key: str, data: bytes) -> None:
        self._put(key, io.BytesIO(data), len(data))

    def _put(self, key: str, stream: Any, length: int) -> None:
        name = self._key(key)
        try:
            self._client.put_object(self.bucket, name, stream, length)
        except Exception as error:
            raise self._error("put", key, error) from error

    def list(self, prefix: str) -> list[ObjectInfo]:
        check_prefix(prefix)
        infos = []
        try:
            for item in self._client.list_objects(self.bucket, prefix=self._root + prefix, recursive=True):
                key = item.object_name[len(self._root) :]
                if item.is_dir or key.startswith(f"{PROBE_FOLDER}/"):
                    continue
                modified = item.last_modified.timestamp() if item.last_modified else 0.0
                infos.append(ObjectInfo(key, int(item.size or 0), modified))
        except Exception as error:
            raise self._error("list", prefix or "/", error) from error
        return sorted(infos, key=lambda info: info.key)

    def delete(self, keys: Iterable[str]) -> None:
        from minio.deleteobjects import DeleteObject

        objects = [DeleteObject(self._key(key)) for key in keys]
        if not objects:
            return
        try:
            # Lazy: the requests run (1,000 keys each) while the errors are read.
            errors = [e for e in self._client.remove_objects(self.bucket, objects) if e.code != "NoSuchKey"]
        except Exception as error:
            raise self._error("delete", objects[0].name, error) from error
        if errors:
            first = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise StoreError(f"{self.description}: cannot delete {first.name}: {first.code} ({first.message}){more}")

    def download(self, prefix: str, dest: Path) -> int:
        prefix = folder_prefix(prefix)
        infos = self.list(prefix)
        for info in infos:
            self._download(info.key, _destination(self.description, dest, prefix, info.key))
        return len(infos)

    def _download(self, key: str, path: Path) -> None:
        name, response = self._key(key), None
        try:
            response = self._client.get_object(self.bucket, name)
            _write_file(path, response.stream(CHUNK_BYTES))
        except OSError as error:
            if _is_network_error(error):
                raise self._error("download", key, error) from error
            raise StoreError(f"{self.description}: cannot download {key} to {path}: {error}") from error
        except Exception as error:
            raise self._error("download", key, error) from error
        finally:
            if response is not None:
                response.close()
                response.release_conn()

    def upload(self, folder: Path, prefix: str, last: str | None = None) -> int:
        prefix = folder_prefix(prefix)
        try:
            files = _folder_files(Path(folder), last)
        except OSError as error:
            raise StoreError(f"{self.description}: cannot upload {folder}: {error}") from error
        for rest, path in files:
            self._upload_file(path, prefix + rest)
        return len(files)

    def _upload_file(self, path: Path, key: str) -> None:
        try:
            source = path.open("rb")
        except OSError as error:
            raise StoreError(f"{self.description}: cannot upload {path}: {error}") from error
        with source:
            self._put(key, source, os.fstat(source.fileno()).st_size)

    def check(self) -> None:
        """The bucket exists, and we may list it and write to it (a probe object, removed again)."""
        probe = f"{PROBE_FOLDER}/{secrets.token_hex(8)}"
        operation = "check bucket"
        try:
            if not self._client.bucket_exists(self.bucket):
                raise StoreError(f"{self.description}: bucket '{self.bucket}' does not exist")
            operation = "list"
            next(iter(self._client.list_objects(self.bucket, prefix=self._root, recursive=False)), None)
            operation = "write probe"
            self._client.put_object(self.bucket, self._root + probe, io.BytesIO(b""), 0)
            operation = "delete probe"
            self._client.remove_object(self.bucket, self._root + probe)
        except StoreError:
            raise
        except Exception as error:
            raise self._error(operation, probe if "probe" in operation else "", error) from error

    # ---- errors ----------------------------------------------------------------------------

    def _error(self, operation: str, key: str, error: Exception) -> StoreError:
        """A StoreError naming the store, the operation and key, and the reason; NotFound for a missing key."""
        from minio.error import S3Error

        what = f"{operation} {key}".rstrip()
        if isinstance(error, StoreError):
            return error
        if isinstance(error, S3Error):
            if error.code in {"NoSuchKey", "NotFound"} and operation in {"get", "download"}:
                return NotFound(f"{self.description}: {key} does not exist")
            if error.code == "NoSuchBucket":
                return StoreError(f"{self.description}: bucket '{self.bucket}' does not exist")
            return StoreError(f"{self.description}: cannot {what}: {error.code} ({error.message})")
        return StoreError(f"{self.description}: cannot {what}: {_reason(error)}")


def _client(settings: S3Settings) -> Minio:
    """A minio client with short connect timeouts and one retry (the default waits minutes)."""
    import urllib3
    from minio import Minio

    ca_file = settings.ca_file
    if ca_file is None:
        try:  # minio's own default (a dependency of minio): images may carry no system CA bundle
            import certifi

            ca_file = certifi.where()
        except ImportError:
            pass

    parts = urllib.parse.urlsplit(settings.endpoint)
    secure = parts.scheme == "https"
    if secure and settings.insecure:
        # Asked for explicitly; urllib3 would warn on every request.
        warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS),
        maxsize=10,
        cert_reqs="CERT_NONE" if settings.insecure else "CERT_REQUIRED",
        ca_certs=ca_file,
        # raise_on_status=False: after the retry, minio reports the 5xx answer itself (its status and body).
        retries=urllib3.Retry(
            total=1, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504], raise_on_status=False
        ),
    )
    return Minio(
        parts.netloc,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        secure=secure,
        region=settings.region,
        http_client=http,
    )


def _is_network_error(error: BaseException) -> bool:
    import urllib3

    return isinstance(error, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


def _reason(error: BaseException) -> str:
    """A short reason: "unreachable: connection refused", "unreachable: timed out", "TLS: ...", or the error."""
    import ssl

    import urllib3

    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        reason = getattr(current, "reason", None)
        current = reason if isinstance(reason, BaseException) else current.__cause__ or current.__context__
    for item in seen:
        if isinstance(item, ssl.SSLError | urllib3.exceptions.SSLError):
            return f"TLS: {getattr(item, 'reason', None) or item}"
    # Errno first: urllib3's NewConnectionError (connection refused) is a ConnectTimeoutError too.
    for item in seen:
        if isinstance(item, OSError) and item.strerror:
            return f"unreachable: {item.strerror[0].lower()}{item.strerror[1:]}"
    for item in seen:
        timeouts = (TimeoutError, urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.ReadTimeoutError)
        if isinstance(item, timeouts):
            return "unreachable: timed out"
    if _is_network_error(error):
        return f"unreachable: {seen[-1]}"
    return f"{type(error).__name__}: {error}"
