"""`RegistryBackend`: `BlobBackend` over one repository, blob `X` being its layer `sha256:X`."""

from __future__ import annotations

from collections.abc import Sequence

from daemon.storage.backend import check_blob_id
from daemon.storage.health import HealthCheck
from daemon.storage.registry.client import RegistryClient
from daemon.storage.registry.errors import RegistryBlobNotFound
from rafs.oci import ImageReference


class RegistryBackend:
    """Bytes of blobs in `image`'s repository, read through `client` (which it closes)."""

    def __init__(self, client: RegistryClient, image: ImageReference) -> None:
        self.client = client
        self.image = image

    def _digest(self, blob_id: str) -> str:
        check_blob_id(blob_id)
        return f"sha256:{blob_id}"

    def read_range(self, blob_id: str, offset: int, length: int) -> bytes:
        return self.client.read_blob_range(self.image, self._digest(blob_id), offset, length)

    def blob_size(self, blob_id: str) -> int:
        digest = self._digest(blob_id)
        size = self.client.blob_size(self.image, digest)
        if size is None:
            raise RegistryBlobNotFound("blob not found", repo=self.image.repository, digest=digest)
        return size

    def warm_mirrors(self, blob_id: str) -> None:
        self.client.ask_mirrors_to_cache(self.image, self._digest(blob_id))

    def health_checks(self) -> Sequence[HealthCheck]:
        return self.client.health_checks()

    def close(self) -> None:
        self.client.close()
