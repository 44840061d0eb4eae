"""pytest fixtures for a real PostgreSQL: a throwaway cluster started by the test session.

Register with ``pytest_plugins = ["tests.support.postgres"]``. One cluster per test session
(``initdb`` + ``pg_ctl``), listening on 127.0.0.1 and a free port, its socket and data in a
private temp directory; stopped and removed at the end. ``postgres_server`` is the cluster
(with one database, ``.url``), ``postgres_db_url`` a fresh database per test.

There is no skip: ``make test`` installs Debian's ``postgresql`` package where ``initdb`` is
missing, so a missing server is a broken setup and fails the tests that need it.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_READY_TIMEOUT_S = 60
_SERVER_USER = "postgres"  # superuser role in the cluster, and the OS user when we are root
_DATABASE = "optuna_cas_test"
# Durability is not what the tests are about: the cluster dies with the session anyway.
_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "200",
}


class PostgresNotFound(RuntimeError):
    """No ``initdb``/``pg_ctl`` on this machine."""


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway PostgreSQL cluster and the database the session shares."""

    host: str
    port: int
    user: str
    database: str
    data_dir: Path
    log_path: Path

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` in this cluster (psycopg2 driver, trust auth)."""
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the session's shared database."""
        return self.url_for(self.database)


def find_postgres_program(name: str) -> Path:
    """``name`` (``initdb``, ``pg_ctl``) from PATH, else from Debian's versioned directory.

    Debian's ``postgresql`` package puts the server programs in
    ``/usr/lib/postgresql/<version>/bin``, which is not on PATH; the newest version wins.
    """
    found = shutil.which(name)
    if found:
        return Path(found)

    def version(path: str) -> tuple[int, ...]:
        match = re.search(r"/postgresql/([\d.]+)/bin/", path)
        return tuple(int(p) for p in match.group(1).split(".") if p) if match else ()

    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version)
    if candidates:
        return Path(candidates[-1])
    raise PostgresNotFound(
        f"PostgreSQL's {name!r} is neither on PATH nor in /usr/lib/postgresql/*/bin: "
        "`make test` installs it (apt-get install postgresql); on another system install "
        "the PostgreSQL server package"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Runner:
    """Runs the server programs as an OS user PostgreSQL accepts.

    ``initdb`` and ``postgres`` refuse to run as root (and CI runs as root): then they run as
    the ``postgres`` system user, which Debian's package creates, in a directory it owns.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.as_user: str | None = None
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(_SERVER_USER)
            except KeyError:
                raise PostgresNotFound(
                    f"running as root, but there is no {_SERVER_USER!r} system user to run "
                    "PostgreSQL as (Debian's postgresql package creates it)"
                ) from None
            self.as_user = _SERVER_USER
            os.chown(workdir, account.pw_uid, account.pw_gid)

    def run(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        # PG* variables of the caller (PGDATA, PGPORT, ...) must not steer our cluster.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        extra: dict[str, Any] = {}
        if self.as_user is not None:
            # extra_groups=[] drops root's supplementary groups, not only its uid and gid.
            extra = {"user": self.as_user, "group": self.as_user, "extra_groups": []}
            env["HOME"] = str(self.workdir)
        return subprocess.run(
            args,
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **extra,
        )


def _check(result: subprocess.CompletedProcess[str], what: str, log_path: Path | None) -> None:
    if result.returncode == 0:
        return
    log = log_path.read_text(errors="replace") if log_path and log_path.exists() else ""
    raise RuntimeError(
        f"{what} failed (exit code {result.returncode}):\n{result.stdout}{result.stderr}"
        + (f"\nserver log:\n{log}" if log else "")
    )


def _connect(server: PostgresServer, database: str = "postgres") -> Any:
    import psycopg2  # the 'dev' extra has psycopg2-binary

    return psycopg2.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        dbname=database,
        connect_timeout=5,
    )


def _wait_until_accepting(server: PostgresServer) -> None:
    # pg_ctl -w already waited for "ready"; this proves the TCP path the tests use works.
    import psycopg2

    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        try:
            _connect(server).close()
            return
        except psycopg2.OperationalError as error:
            if time.monotonic() > deadline:
                log = server.log_path.read_text(errors="replace")
                raise RuntimeError(
                    f"PostgreSQL on port {server.port} accepts no connection: {error}\n{log}"
                ) from error
            time.sleep(0.1)


def create_database(server: PostgresServer, name: str) -> str:
    """Create database ``name`` in ``server`` and return its SQLAlchemy URL."""
    connection = _connect(server)
    try:
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()
    return server.url_for(name)


def drop_database(server: PostgresServer, name: str) -> None:
    """Drop database ``name``, closing the connections pools in the test still hold."""
    connection = _connect(server)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        connection.close()


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 and a free port, for as long as the block runs.

    The data directory, the Unix socket and the log live in one new temp directory (owned by
    the ``postgres`` user when we are root), removed afterwards. Raises
    :class:`PostgresNotFound` if PostgreSQL is not installed.
    """
    initdb = find_postgres_program("initdb")
    pg_ctl = find_postgres_program("pg_ctl")
    # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700, closed to the postgres user.
    workdir = Path(tempfile.mkdtemp(prefix="optuna-cas-pg-"))
    data_dir, log_path = workdir / "data", workdir / "server.log"
    started = False
    try:
        runner = _Runner(workdir)
        result = runner.run(
            [
                *(str(initdb), "-D", str(data_dir), "-U", _SERVER_USER),
                *("--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"),
            ],
            timeout=120,
        )
        _check(result, "initdb", None)
        # The port is found by binding port 0 and releasing it; another process may take it
        # before the server binds it: then the start fails and we try another port.
        for attempt in range(5):
            port = _free_port()
            settings = {
                **_SETTINGS,
                "listen_addresses": "'127.0.0.1'",
                "port": str(port),
                "unix_socket_directories": f"'{workdir}'",
            }
            # Later lines win in postgresql.conf; root may write the postgres-owned file.
            with (data_dir / "postgresql.conf").open("a") as conf:
                conf.write("\n# optuna-cas test cluster\n")
                conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
            log_path.unlink(missing_ok=True)  # the "already in use" check reads this try's log
            result = runner.run(
                [
                    *(str(pg_ctl), "start", "-D", str(data_dir), "-l", str(log_path)),
                    *("-w", "-t", str(_READY_TIMEOUT_S)),
                ],
                timeout=_READY_TIMEOUT_S + 30,
            )
            if result.returncode == 0:
                started = True
                break
            if attempt == 4 or "already in use" not in log_path.read_text(errors="replace"):
                _check(result, "pg_ctl start", log_path)
        server = PostgresServer(
            host="127.0.0.1",
            port=port,
            user=_SERVER_USER,
            database=_DATABASE,
            data_dir=data_dir,
            log_path=log_path,
        )
        _wait_until_accepting(server)
        create_database(server, _DATABASE)
        yield server
    finally:
        if started:
            stop = [str(pg_ctl), "stop", "-D", str(data_dir), "-w", "-t", "30"]
            result = runner.run([*stop, "-m", "fast"], timeout=60)
            if result.returncode != 0:
                runner.run([*stop, "-m", "immediate"], timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster, started once per session; fails if none is installed."""
    try:
        with running_postgres() as server:
            yield server
    except PostgresNotFound as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture
def postgres_db_url(postgres_server: PostgresServer) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = create_database(postgres_server, name)
    yield url
    drop_database(postgres_server, name)
