"""Reliability tests reuse the e2e fixtures (a scriptable sink, in-process gateways) and the
PostgreSQL fixture (a fresh database per test)."""

from tests.e2e.conftest import gateway, make_gateway, sink  # noqa: F401  (fixtures, by name)
from tests.postgres.conftest import pg_url  # noqa: F401
