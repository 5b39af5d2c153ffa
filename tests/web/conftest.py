"""The web tests relay released messages to the same kind of sink as the e2e tests."""

from tests.e2e.conftest import sink  # noqa: F401  (a fixture, used by name)
