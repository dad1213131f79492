"""`HttpBackend`: blobs at `{url}/{blob_id}` on any HTTP server that honours `Range` (Nydus's `http`).

It knows bytes, never files: each read is one `Range` GET through the shared `HttpTransport`
(`daemon.storage.transport`), which owns retries, deadlines and body bounds.
"""

from __future__ import annotations

import requests

from daemon.storage.backend import BackendError, BlobNotFound, RangeNotSatisfied, check_blob_id
from daemon.storage.options import HttpConfig
from daemon.storage.transport import HttpTransport, RemoteError, content_length, range_header, slice_range


class HttpBackend:
    """Implements `daemon.storage.backend.BlobBackend` over a plain URL prefix."""

    def __init__(self, config: HttpConfig) -> None:
        self.url = config.url.rstrip("/")
        self.transport = HttpTransport(config.http)

    def _blob_url(self, blob_id: str) -> str:
        check_blob_id(blob_id)
        return f"{self.url}/{blob_id}"

    def read_range(self, blob_id: str, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        url = self._blob_url(blob_id)
        result: list[bytes] = []

        def take(response: requests.Response) -> None:
            result.append(slice_range(self.transport, response, offset, length))

        response = self.transport.request("GET", url, headers=range_header(offset, length), on_success=take)
        if result:
            if len(result[0]) < length:
                raise RangeNotSatisfied(f"range {offset}+{length} is past the end", blob_id=blob_id)
            return result[0]
        raise _status_error(response, blob_id)

    def blob_size(self, blob_id: str) -> int:
        url = self._blob_url(blob_id)
        response = self.transport.request("HEAD", url)
        size = content_length(response)
        if response.status_code == 200 and size is not None:
            return size
        raise _status_error(response, blob_id)

    def close(self) -> None:
        self.transport.close()


def _status_error(response: requests.Response, blob_id: str) -> BackendError:
    status = response.status_code
    if status == 404:
        return BlobNotFound(f"not found at {response.url}", blob_id=blob_id)
    if status == 416:
        return RangeNotSatisfied(f"range not satisfiable at {response.url}", blob_id=blob_id)
    return RemoteError(f"HTTP {status} {response.reason}", url=response.url, status=status, blob_id=blob_id)
