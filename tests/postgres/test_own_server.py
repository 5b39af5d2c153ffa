"""Without a configured or local PostgreSQL the suite starts its own throwaway server, and
when it cannot, every PostgreSQL test says why in one line (issue 16)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when we return


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SKOT_TEST_POSTGRES", "SKOT_NO_POSTGRES", "SKOT_TEST_POSTGRES_PROBE")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


OWN = """
import os, psycopg
from tests.postgres import conftest
url = conftest.admin_url()
with psycopg.connect(url, autocommit=True) as conn:
    port = conn.execute("SHOW port").fetchone()[0]
    data = conn.execute("SHOW data_directory").fetchone()[0]
print(url, port, data, flush=True)
"""


def test_nothing_at_the_usual_place_starts_a_throwaway_server(tmp_path: Path) -> None:
    closed = _closed_port()
    proc = subprocess.run([sys.executable, "-c", OWN], capture_output=True, text=True,
                          timeout=180, cwd=ROOT, env=_env(
                              SKOT_TEST_POSTGRES_PROBE=f"postgresql://postgres@127.0.0.1:"
                                                       f"{closed}/postgres"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    url, port, data = proc.stdout.split()
    assert url == f"postgresql://postgres@127.0.0.1:{port}/postgres"
    assert int(port) not in (closed, 5432)
    assert "skot-test-pg-" in data
    # stopped and removed when the run ended
    assert not Path(data).exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", int(port))) != 0


CANNOT = """
from tests.postgres import conftest
conftest.glob.glob = lambda pattern: []          # no Debian postgresql package ...
conftest.shutil.which = lambda name: None        # ... and nothing on PATH
try:
    conftest.admin_url()
except conftest.NoPostgres as exc:
    print(exc)
"""


def test_no_server_and_none_to_start_is_one_clear_line() -> None:
    closed = _closed_port()
    proc = subprocess.run([sys.executable, "-c", CANNOT], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=_env(
                              SKOT_TEST_POSTGRES_PROBE=f"postgresql://postgres@127.0.0.1:"
                                                       f"{closed}/postgres"))
    assert proc.stdout.strip() == (
        f"PostgreSQL: nothing answers at postgresql://postgres@127.0.0.1:{closed}/postgres "
        "and the suite cannot start its own: initdb not found (install Debian's postgresql "
        "package, as .ci/run does, or set SKOT_TEST_POSTGRES to an admin URL)")


def test_a_configured_server_that_is_down_fails_each_test_in_one_line() -> None:
    closed = _closed_port()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
                           "-p", "no:cacheprovider",
                           "tests/postgres/test_postgres_store.py::test_append_list_verify"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=_env(SKOT_TEST_POSTGRES=f"postgresql://postgres@127.0.0.1:"
                                                      f"{closed}/postgres"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout and "raise " not in proc.stdout
    assert "During handling" not in proc.stdout, proc.stdout
    said = [ln for ln in proc.stdout.splitlines()
            if ln.startswith(f"PostgreSQL at postgresql://postgres@127.0.0.1:{closed}/postgres: "
                             "connection failed")]
    assert len(said) == 1, proc.stdout
