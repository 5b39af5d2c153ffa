"""A fresh database for each test, dropped after, on the PostgreSQL server the tests find:

1. ``SKOT_TEST_POSTGRES`` (an admin URL), when set;
2. else ``postgres@127.0.0.1:5432`` when it lets the tests in;
3. else a throwaway server of the suite's own: ``initdb`` + ``pg_ctl`` from Debian's
   ``postgresql`` package (``.ci/run`` installs it) on a free loopback port, in a temporary
   folder removed at the end of the run.

When none of these works every PostgreSQL test fails with one line saying why (no raw
``OperationalError``); ``SKOT_NO_POSTGRES=1`` skips them instead.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.e2e.conftest import sink  # noqa: F401  (a fixture, used by name: multi-node tests)

# Where the suite looks before starting its own server (a test points it at a closed port).
PROBE = os.environ.get("SKOT_TEST_POSTGRES_PROBE", "postgresql://postgres@127.0.0.1:5432/postgres")

_found: dict[str, str] = {}


class NoPostgres(Exception):
    """Why no PostgreSQL server could be found or started: one line."""


def _answers(url: str) -> bool:
    """Something at ``url`` lets us in as its admin (a Debian cluster just installed by
    .ci/run answers on 5432 but wants a password: then the suite starts its own)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432),
                                      timeout=2):
            pass
        with psycopg.connect(url, connect_timeout=3):
            return True
    except (OSError, psycopg.Error):
        return False


def _binary(name: str) -> str:
    """``initdb``/``pg_ctl``: Debian keeps them in /usr/lib/postgresql/N/bin, off PATH."""
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    found = versions[-1] if versions else shutil.which(name)
    if not found:
        raise NoPostgres(f"{name} not found (install Debian's postgresql package, as .ci/run "
                         "does, or set SKOT_TEST_POSTGRES to an admin URL)")
    return found


def start_own() -> str:
    """initdb + pg_ctl start on a free loopback port; stopped and removed at exit."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    base = tempfile.mkdtemp(prefix="skot-test-pg-")
    user: str | None = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use its own account
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base, ignore_errors=True)
            raise NoPostgres("running as root and there is no 'postgres' user to run a "
                             "throwaway server as") from None
        os.chown(base, account.pw_uid, account.pw_gid)
        os.chmod(base, 0o700)
        user = "postgres"
    data = os.path.join(base, "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd: str) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, user=user, timeout=120,
                              cwd=base)
        if proc.returncode != 0:
            shutil.rmtree(base, ignore_errors=True)
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            raise NoPostgres(f"{os.path.basename(cmd[0])} failed: {last[0]}")

    run(initdb, "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
    run(pg_ctl, "-D", data, "-l", os.path.join(base, "log"), "-w", "-t", "60", "-o",
        f"-h 127.0.0.1 -p {port} -k {base} -c max_connections=200", "start")

    def stop() -> None:
        subprocess.run([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"],
                       capture_output=True, user=user, timeout=60, cwd=base)
        shutil.rmtree(base, ignore_errors=True)

    atexit.register(stop)
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def admin_url() -> str:
    """The admin URL of the server the tests use (found once per run); NoPostgres if none."""
    if "url" in _found:
        return _found["url"]
    if "error" in _found:
        raise NoPostgres(_found["error"])
    try:
        url = os.environ.get("SKOT_TEST_POSTGRES") or (
            PROBE if _answers(PROBE) else start_own())
    except NoPostgres as exc:
        _found["error"] = (f"PostgreSQL: nothing answers at {PROBE} and the suite cannot "
                           f"start its own: {exc}")
        raise NoPostgres(_found["error"]) from None
    _found["url"] = url
    return url


@pytest.fixture
def pg_url() -> Iterator[str]:
    name = f"skot_test_{uuid.uuid4().hex[:10]}"
    admin_dsn, problem = "", ""
    try:
        admin_dsn = admin_url()
        admin = psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5)
    except NoPostgres as exc:
        problem = str(exc)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()
        problem = f"PostgreSQL at {admin_dsn}: {first[0] if first else type(exc).__name__}"
    if problem:  # outside the except: one line, no chained traceback
        if os.environ.get("SKOT_NO_POSTGRES") == "1":
            pytest.skip(f"PostgreSQL not available and SKOT_NO_POSTGRES=1: {problem}")
        pytest.fail(problem, pytrace=False)
    admin.execute(f'CREATE DATABASE "{name}"')
    base = admin_dsn.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
