"""`open_backend`: the one constructor from a backend's config record to the backend itself.

The remote backends are imported only when used: a local mount never imports `requests`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from daemon.storage.backend import BlobBackend
from daemon.storage.localfs import LocalFsBackend
from daemon.storage.options import BackendConfig, HttpConfig, LocalFsConfig, RegistryConfig
from rafs.oci import ImageReference

if TYPE_CHECKING:
    from daemon.storage.registry import RegistryBackend


def open_registry_backend(config: RegistryConfig) -> RegistryBackend:
    """A client for `config.host` and the backend over `config.repo`."""
    from daemon.storage.registry import RegistryBackend, RegistryClient

    return RegistryBackend(RegistryClient(config.options), ImageReference.parse(f"{config.host}/{config.repo}"))


def open_backend(config: BackendConfig) -> BlobBackend:
    """The backend `config` describes: `localfs`, `http` (a URL prefix) or `registry`."""
    if isinstance(config, LocalFsConfig):
        return LocalFsBackend(config.dir)
    if isinstance(config, HttpConfig):
        from daemon.storage.http import HttpBackend

        return HttpBackend(config)
    return open_registry_backend(config)
