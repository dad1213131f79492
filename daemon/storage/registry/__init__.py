"""The one OCI distribution client, for `nydusify` and for the daemon. Its public names are here.

Layout:
- `auth.py`: challenges, docker config logins, bearer tokens;
- `client.py`: `RegistryClient` (manifests, blobs, ranges, uploads; mirrors before the origin);
- `backend.py`: `RegistryBackend`, the `BlobBackend` adapter;
- `errors.py`: `RegistryError` and its branches.
Every other module imports from this package, never from one of its modules.
"""

from daemon.storage.options import HttpOptions, Mirror, Proxy, RegistryConfig, RegistryOptions
from daemon.storage.registry.auth import docker_config_credentials, parse_challenge
from daemon.storage.registry.backend import RegistryBackend
from daemon.storage.registry.client import Manifest, RegistryClient, is_loopback
from daemon.storage.registry.errors import (
    DigestMismatch,
    ManifestNotFound,
    RegistryAuthError,
    RegistryBlobNotFound,
    RegistryError,
    RegistryRangeNotSatisfied,
)
from daemon.storage.transport import RemoteError, RemoteUnavailable, TlsError

__all__ = [
    "DigestMismatch",
    "HttpOptions",
    "Manifest",
    "ManifestNotFound",
    "Mirror",
    "Proxy",
    "RegistryAuthError",
    "RegistryBackend",
    "RegistryBlobNotFound",
    "RegistryClient",
    "RegistryConfig",
    "RegistryError",
    "RegistryOptions",
    "RegistryRangeNotSatisfied",
    "RemoteError",
    "RemoteUnavailable",
    "TlsError",
    "docker_config_credentials",
    "is_loopback",
    "parse_challenge",
]
