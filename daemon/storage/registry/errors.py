"""The registry client's errors: each carries the URL, the repository and the digest involved.

Where a registry failure is also a backend failure the daemon knows (a refused login, a missing
blob, a range past the end), the class is both, so the read path maps it to an errno without
knowing there is a registry behind it.
"""

from __future__ import annotations

from daemon.storage import backend
from daemon.storage.transport import RemoteError


class RegistryError(RemoteError):
    """The registry refused or failed a request; carries the URL, repository and digest."""

    def __init__(self, message: str, *, url: str = "", status: int = 0, repo: str = "", digest: str = "") -> None:
        super().__init__(message, ("repo", repo), ("digest", digest), url=url, status=status)
        self.repo = repo
        self.digest = digest
        self.blob_id = digest.partition(":")[2]


class RegistryAuthError(RegistryError, backend.AuthError):
    """The registry or its token server refused our credentials (or we had none to offer)."""


class RegistryBlobNotFound(RegistryError, backend.BlobNotFound):
    """The repository has no blob of that digest."""


class ManifestNotFound(RegistryError):
    """The repository has no manifest for that tag or digest."""


class RegistryRangeNotSatisfied(RegistryError, backend.RangeNotSatisfied):
    """The blob ends before the range asked for."""


class DigestMismatch(RegistryError):
    """Content whose sha256 differs from the digest it was fetched by: altered or wrong content."""
