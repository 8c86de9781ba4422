"""A real PostgreSQL (Debian's server binaries, /usr/lib/postgresql/<version>/bin) for the test bed: the
labels' ledger of the design's "object store + database" mode.

TCP only (no Unix socket), password (SCRAM) authentication for every role, and one database per tenant,
owned by the tenant's role (so it creates its tables and partitions) and closed to every other role:

    db = Postgres(workdir).start()
    url = db.create_tenant("churn")    # postgresql://churn:<password>@127.0.0.1:<port>/churn
    db.kill(); db.start()               # a crash and a restart on the same data and port

Run as root, the server runs as the `postgres` OS user (PostgreSQL refuses root), so `workdir` must be a
folder that user can reach: not under pytest's 0700 temporary folders (the fixtures use /var/tmp).
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

from mfl_testbed.netutil import LOOPBACK, free_port, wait_until
from mfl_testbed.process import ManagedProcess, TestbedError, TestbedUnavailable

SUPERUSER = "postgres"
OS_USER = "postgres"  # Debian's package creates it
TENANT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
# Small: a test bed on a 2-core machine. fsync off: the data survives the server's crash (kill), not the
# machine's, and the tests crash only the server.
SETTINGS = {
    "shared_buffers": "16MB",
    "max_connections": "60",
    "fsync": "off",
    "full_page_writes": "off",
    "unix_socket_directories": "",
    "password_encryption": "scram-sha-256",
    "log_destination": "stderr",
    "log_min_messages": "warning",
    "log_connections": "off",
}
# Every TCP connection authenticates with its role's password; a tenant reaches only its own database
# because CONNECT on it is revoked from PUBLIC (create_tenant), as on a shared production server.
PG_HBA = "host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n"


def postgres_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding a `postgres`, else `pg_config --bindir`."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (bindir / "postgres").is_file():
            return bindir
    return None


class Postgres:
    """PostgreSQL on `host`:<free port> (127.0.0.1, or the node's IP so Pods reach it); data in `workdir`."""

    def __init__(self, workdir: Path, host: str = LOOPBACK) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "logs" / "postgres.log"
        self.port = 0
        self.passwords = {SUPERUSER: secrets.token_urlsafe(18)}
        self.startup_seconds: float | None = None
        self._process: ManagedProcess | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Postgres:
        """initdb on the first start; then the server, until the superuser can run a query."""
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise TestbedUnavailable("PostgreSQL not found: `apt-get install postgresql`")
        started = time.monotonic()
        self.port = self.port or free_port(self.host)  # a restart keeps its address (and its data)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bin_dir)
        self._process = ManagedProcess(
            "postgres",
            [*self._as_owner(), str(bin_dir / "postgres"), *self._arguments()],
            self.log_path,
            env=_env(),
            cwd=self.workdir,
        )
        atexit.register(self.stop)
        self._process.start()
        try:
            wait_until(self._ready, timeout, "postgres to accept connections", on_poll=self._process.check_running)
        except BaseException as error:
            log = self._process.tail()
            self.stop()
            if isinstance(error, TimeoutError):
                raise TestbedError(f"{error}; last lines of its log:\n{log}") from error
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _arguments(self) -> list[str]:
        settings = {**SETTINGS, "listen_addresses": self.host, "port": str(self.port)}
        return ["-D", str(self.data_dir), *(f"-c{name}={value}" for name, value in settings.items())]

    def _initdb(self, bin_dir: Path) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        password_file = self.workdir / "superuser-password"
        password_file.write_text(self.passwords[SUPERUSER] + "\n")
        password_file.chmod(0o600)
        owner = self._owner()
        if owner is not None:
            os.chown(self.workdir, owner.pw_uid, owner.pw_gid)
            os.chown(password_file, owner.pw_uid, owner.pw_gid)
        command = [
            *self._as_owner(),
            str(bin_dir / "initdb"),
            f"--pgdata={self.data_dir}",
            f"--username={SUPERUSER}",
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=self.workdir, timeout=120)
        finally:
            password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            raise TestbedError(f"initdb failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
        (self.data_dir / "pg_hba.conf").write_text(PG_HBA)

    def _owner(self) -> pwd.struct_passwd | None:
        """The OS user the server runs as: `postgres` when we are root (PostgreSQL refuses root), else us."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(OS_USER)
        except KeyError:
            raise TestbedUnavailable(f"running as root needs the OS user {OS_USER!r} (Debian's postgresql)") from None

    def _as_owner(self) -> list[str]:
        owner = self._owner()
        if owner is None:
            return []
        return ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--clear-groups", "--"]

    def _ready(self) -> bool:
        with self.connect() as connection:
            connection.execute("SELECT 1")
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """A fast shutdown (SIGINT: clients are disconnected, unlike SIGTERM's wait for them); safe to call
        more than once."""
        process = self._process
        if process is not None:
            if process.running and process.pid:
                os.kill(process.pid, signal.SIGINT)
                deadline = time.monotonic() + timeout
                while process.running and time.monotonic() < deadline:
                    time.sleep(0.05)
            process.stop()
            self._process = None
        atexit.unregister(self.stop)

    def kill(self) -> None:
        """SIGKILL the server and its backends, as a crash would; `start()` recovers from the WAL."""
        if self._process is not None and self._process.running and self._process.pid:
            os.killpg(self._process.pid, signal.SIGKILL)
        self.stop()

    def restart(self, timeout: float = 60.0) -> Postgres:
        self.stop()
        return self.start(timeout)

    def detach(self) -> None:
        """Leave it running when this process exits (`mfl demo --keep`)."""
        atexit.unregister(self.stop)
        self._process = None

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def log_tail(self, lines: int = 40) -> str:
        return self._process.tail(lines) if self._process else ""

    # ---- roles and databases ---------------------------------------------------------------

    def url(self, role: str = SUPERUSER, db: str | None = None) -> str:
        """`postgresql://role:password@host:port/db` (db defaults to the role's own database)."""
        if role not in self.passwords:
            raise KeyError(f"no role {role!r} was created here")
        user, password = urllib.parse.quote(role, safe=""), urllib.parse.quote(self.passwords[role], safe="")
        database = urllib.parse.quote(db or role, safe="")
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{database}"

    @property
    def admin_url(self) -> str:
        return self.url(SUPERUSER, "postgres")

    def connect(self, url: str | None = None, **kwargs: Any) -> Any:
        """A psycopg connection (autocommit) to `url`, the superuser's by default."""
        import psycopg

        return psycopg.connect(url or self.admin_url, autocommit=True, connect_timeout=3, **kwargs)

    def create_tenant(self, name: str) -> str:
        """Role `name` (LOGIN, a random password) owning database `name`, which no other role (but the
        superuser) may connect to; returns its URL. Again for an existing tenant: its URL."""
        from psycopg import sql

        if not TENANT_NAME.match(name) or name == SUPERUSER:
            raise ValueError(f"tenant name {name!r}: lowercase letters, digits, '_' or '-', at most 63")
        password = self.passwords.get(name) or secrets.token_urlsafe(18)
        role = sql.Identifier(name)
        with self.connect() as connection:
            exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone()
            verb = "ALTER" if exists else "CREATE"
            connection.execute(sql.SQL(f"{verb} ROLE {{}} LOGIN PASSWORD {{}}").format(role, sql.Literal(password)))
            if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                connection.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(role, role))
            connection.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(role))
            connection.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(role, role))
        self.passwords[name] = password
        return self.url(name)

    def drop_tenant(self, name: str) -> None:
        """Drop tenant `name`'s database (closing its connections) and role."""
        from psycopg import sql

        with self.connect() as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        self.passwords.pop(name, None)


def _env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
