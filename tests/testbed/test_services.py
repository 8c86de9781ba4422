"""The test bed's PostgreSQL (mfl_testbed.postgres): one database per tenant, closed to the other tenants,
password authentication only, and data that survives a crash and a restart."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from mfl_testbed.postgres import Postgres

pytestmark = pytest.mark.integration


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A server of this test's own (it crashes it); under /var/tmp, which the `postgres` user can reach."""
    workdir = Path(tempfile.mkdtemp(prefix="mfl-postgres-test-", dir="/var/tmp"))
    workdir.chmod(0o755)
    server = Postgres(workdir / "server")
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_tenant_owns_its_database_and_no_other_tenant_may_connect(postgres: Postgres) -> None:
    url_a, url_b = postgres.create_tenant("services_a"), postgres.create_tenant("services-b")
    assert url_a == postgres.url("services_a") and url_a.startswith("postgresql://services_a:")
    assert url_a.endswith(f"@{postgres.host}:{postgres.port}/services_a")
    with psycopg.connect(url_a, autocommit=True) as connection:
        # What the ledger does: a partitioned table and daily partitions, created by the tenant's role.
        connection.execute(
            "CREATE TABLE labels (day date NOT NULL, id text NOT NULL, PRIMARY KEY (day, id)) PARTITION BY RANGE (day)"
        )
        connection.execute(
            "CREATE TABLE labels_d1 PARTITION OF labels FOR VALUES FROM ('2024-01-01') TO ('2024-01-02')"
        )
        connection.execute("INSERT INTO labels VALUES ('2024-01-01', 'x')")

    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(postgres.url("services-b", "services_a"), connect_timeout=3)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(url_b.replace(postgres.passwords["services-b"], "wrong"), connect_timeout=3)
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):  # no trust: a password always
        psycopg.connect(f"postgresql://services_a@{postgres.host}:{postgres.port}/services_a", connect_timeout=3)
    with psycopg.connect(url_b) as connection:  # B's own database works, and holds none of A's tables
        assert connection.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'labels'").fetchone() == (0,)

    assert postgres.create_tenant("services_a") == url_a  # again: the same role, password and database
    postgres.drop_tenant("services_a")
    postgres.drop_tenant("services-b")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url_a, connect_timeout=3)


def test_the_postgres_url_fixture_is_a_fresh_database(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE t (x int)")
        assert connection.execute("SELECT current_user = current_database()").fetchone() == (True,)


def test_data_survives_a_crash_and_a_restart(own_postgres: Postgres) -> None:
    url = own_postgres.create_tenant("crash")
    port = own_postgres.port
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CREATE TABLE t (x int)")
        connection.execute("INSERT INTO t VALUES (1)")
    own_postgres.kill()
    assert not own_postgres.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=3)
    own_postgres.start()
    with psycopg.connect(url, autocommit=True) as connection:
        assert connection.execute("SELECT x FROM t").fetchall() == [(1,)]
        connection.execute("INSERT INTO t VALUES (2)")
    held = psycopg.connect(url)  # an open client does not hold up a stop (a fast shutdown)
    own_postgres.restart()
    assert own_postgres.port == port
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
    held.close()
