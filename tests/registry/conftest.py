"""The registry fixtures, for the tests under this directory (see tests/registry_fixture.py)."""

from tests.registry_fixture import basic_registry, registry, tls_registry, token_registry

__all__ = ["basic_registry", "registry", "tls_registry", "token_registry"]
