"""The one OCI distribution client, for `nydusify` and for the daemon. Its public names are here.

Layout:
- `auth.py`: challenges, docker config logins, bearer tokens;
- `client.py`: `RegistryClient` (manifests, blobs, ranges, uploads; mirrors or the proxy before the origin);
- `mirrors.py`: mirror endpoints and the range gate (a pull-through mirror's first answer is the whole blob);
- `proxy.py`: Dragonfly's proxy: its rules, headers and errors;
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
from daemon.storage.registry.mirrors import Probe
from daemon.storage.registry.proxy import ProxyError, ProxyForbidden, ProxyRateLimited, ProxyUnavailable
from daemon.storage.transport import RemoteError, RemoteUnavailable, TlsError

__all__ = [
    "DigestMismatch",
    "HttpOptions",
    "Manifest",
    "ManifestNotFound",
    "Mirror",
    "Probe",
    "Proxy",
    "ProxyError",
    "ProxyForbidden",
    "ProxyRateLimited",
    "ProxyUnavailable",
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
