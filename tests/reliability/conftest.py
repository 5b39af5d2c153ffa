"""Reliability tests reuse the e2e fixtures: a scriptable sink and in-process gateways."""

from tests.e2e.conftest import gateway, make_gateway, sink  # noqa: F401  (fixtures, by name)
