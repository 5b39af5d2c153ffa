"""A fresh database on the PostgreSQL server of this machine for each test, dropped after."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.e2e.conftest import sink  # noqa: F401  (a fixture, used by name: multi-node tests)

ADMIN = os.environ.get("SKOT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_url() -> Iterator[str]:
    name = f"skot_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("SKOT_NO_POSTGRES") == "1":
            pytest.skip(f"PostgreSQL not reachable and SKOT_NO_POSTGRES=1: {exc}")
        raise
    admin.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
