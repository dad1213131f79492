"""The HTTP transport shared by the `http` and `registry` backends: one session, one retry policy.

`HttpTransport` owns one pooled `requests.Session`, the timeouts and the one retry policy:
connection errors, truncated or too slow bodies, 429 and 5xx are retried with exponential
backoff; any other status goes back to the caller at once, because a 4xx will not change by
asking again (and retrying a refused login only locks accounts).

Nothing a server sends is trusted to be small or quick. Every body is read through `read_body`:
at most a stated number of bytes (a manifest 4 MiB, an error body 4 MiB, a range exactly its
length), never decompressed (`Accept-Encoding: identity`), and within a deadline that grows with
its length: `timeout` for the first byte and any pause, plus `length / min_transfer_rate`.
Every `requests` and `urllib3` failure becomes a `BackendError` subclass carrying the URL, so the
daemon answers EIO with one log line and never a traceback for what a remote party did.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO

import requests
import requests.adapters
import urllib3

from daemon.storage.backend import BackendError, TransientError
from daemon.storage.options import HttpOptions

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
Body = bytes | Callable[[], IO[bytes]] | None
MAX_SMALL_BODY_BYTES = 4 << 20  # manifests, indexes, tokens, error bodies (containerd caps manifests at 4 MiB)
READ_PIECE_BYTES = 1 << 20


class RemoteError(BackendError):
    """A server answered in a way we cannot use; carries the URL and the HTTP status (0 if none)."""

    def __init__(
        self, message: str, *context: tuple[str, object], url: str = "", status: int = 0, blob_id: str = ""
    ) -> None:
        super().__init__(message, *context, ("url", url), blob_id=blob_id)
        self.url = url
        self.status = status


class RemoteUnavailable(RemoteError, TransientError):
    """Every attempt failed with a connection error, a truncated body, 429 or 5xx."""


class TlsError(RemoteError):
    """The TLS handshake failed (untrusted certificate, or not a TLS server): not retried."""


class TruncatedBody(Exception):
    """Raised by a success handler when a body is shorter than promised: the attempt is retried."""


class TransferTooSlow(TruncatedBody):
    """A body that did not arrive within its deadline: the attempt is abandoned and retried."""


class BodyTooLarge(RemoteError):
    """A server sent more than the request can need (a giant manifest, a range longer than asked)."""


class RequestFailed(RemoteError):
    """`requests` refused the exchange (redirect loop, invalid URL or header): not retried."""


class HttpTransport:
    """One pooled session and the retry loop. Thread-safe: the daemon calls it from worker threads."""

    def __init__(self, options: HttpOptions | None = None) -> None:
        self.options = options or HttpOptions()
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=self.options.pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.verify = not self.options.skip_verify
        if self.options.skip_verify:
            log.warning("TLS certificates will not be verified (skip_verify)")
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # said once above, not per request
        # identity: a body is what was asked for, never something that decompresses into gigabytes
        self.session.headers.update({"User-Agent": "nydus-py", "Accept-Encoding": "identity", **self.options.headers})
        self.session.trust_env = False  # a proxy from the environment must not redirect loopback traffic
        self._closed = threading.Event()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        stream: bool = False,
        retry: bool = True,
        on_success: Callable[[requests.Response], None] | None = None,
        proxies: Mapping[str, str] | None = None,
        retry_statuses: frozenset[int] = RETRY_STATUSES,
    ) -> requests.Response:
        """Send until a non-retryable answer; `on_success` runs inside the loop for 2xx answers.

        `proxies` (scheme -> proxy URL) sends the request through an HTTP forward proxy;
        `retry_statuses` are the answers retried (the others come back to the caller).

        `on_success` may raise `TruncatedBody` (or let a broken stream's exception escape) to have
        the attempt retried: that is how a body cut short mid-way is fetched again.
        """
        attempts = self.options.retry_limit + 1 if retry else 1
        problem = ""
        retry_after_s = 0.0
        for attempt in range(attempts):
            if attempt:
                self.backoff(attempt, problem, retry_after_s)
            data = body() if callable(body) else body
            try:
                response = self.session.request(
                    method,
                    url,
                    headers=dict(headers or {}),
                    data=data,
                    stream=True,
                    timeout=(self.options.connect_timeout_s, self.options.timeout_s),
                    allow_redirects=True,
                    proxies=dict(proxies) if proxies else None,
                )
                if response.status_code in retry_statuses:
                    problem = f"HTTP {response.status_code}"
                    retry_after_s = _retry_after_s(response)
                    response.close()
                    continue
                if on_success is not None and 200 <= response.status_code < 300:
                    try:
                        on_success(response)
                    finally:
                        response.close()
                elif not stream and on_success is None and method != "HEAD":
                    # what `stream=False` would do, but bounded: at most 4 MiB, within the deadline
                    try:
                        response._content = self.read_body(response, MAX_SMALL_BODY_BYTES)
                    finally:
                        response.close()
                return response
            except requests.exceptions.SSLError as error:
                raise TlsError(f"TLS handshake failed: {_tls_reason(error)}", url=url) from None
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
                TruncatedBody,
            ) as error:
                problem = _describe(error)
            except (requests.RequestException, urllib3.exceptions.HTTPError, ValueError) as error:
                # redirect loops, redirects to invalid URLs (`urlparse` raises ValueError), bad headers
                raise RequestFailed(f"{method} failed: {_describe(error)}", url=url) from None
            finally:
                if data is not None and not isinstance(data, bytes):
                    data.close()
        raise RemoteUnavailable(f"{method} failed after {attempts} attempt(s): {problem}", url=url)

    def read_body(self, response: requests.Response, max_bytes: int, *, stop_at_max: bool = False) -> bytes:
        """The body of `response`, read as it arrives, within its deadline and size bound.

        More than `max_bytes` is `BodyTooLarge` (not retried: a server sending a 400 MiB manifest
        will send it again), or with `stop_at_max` just where reading stops (a whole blob sent for
        a range). See `body_pieces` for the deadline.
        """
        return b"".join(self.body_pieces(response, max_bytes, stop_at_max=stop_at_max))

    def body_pieces(self, response: requests.Response, max_bytes: int, *, stop_at_max: bool = False) -> Iterator[bytes]:
        """The body in pieces as they arrive (for streaming to a file), bounded as `read_body`.

        The deadline: `timeout` for any pause (the socket's own), and the whole body within
        `timeout + max_bytes / min_transfer_rate`; missing it is `TransferTooSlow` (retried). A
        connection failure mid-way, or fewer bytes than `Content-Length`, is `TruncatedBody`
        (retried). urllib3's `read1` returns whatever has arrived, so a trickling server is
        caught as soon as it falls behind, not after a full buffer.
        """
        declared = content_length(response)
        if declared is not None and declared > max_bytes and not stop_at_max:
            raise BodyTooLarge(
                f"answer of {declared} bytes, more than the {max_bytes} bytes accepted", url=response.url
            )
        expected = declared if declared is not None and declared <= max_bytes else max_bytes
        rate = self.options.min_rate_bytes_per_s
        allowed_s = self.options.timeout_s + (expected / rate if rate > 0 else math.inf)
        started = time.monotonic()
        received = 0
        while received < max_bytes or not stop_at_max:
            wanted = min(READ_PIECE_BYTES, max_bytes - received) if stop_at_max else READ_PIECE_BYTES
            try:
                piece = response.raw.read1(wanted)
            except (urllib3.exceptions.HTTPError, OSError, requests.RequestException) as error:
                raise TruncatedBody(f"after {received} bytes: {_describe(error)}") from None
            if not piece:
                break
            received += len(piece)
            if received > max_bytes:
                raise BodyTooLarge(f"answer longer than the {max_bytes} bytes accepted", url=response.url)
            elapsed_s = time.monotonic() - started
            if elapsed_s > allowed_s:
                raise TransferTooSlow(
                    f"{received} bytes in {elapsed_s:.1f} s, {allowed_s:.1f} s allowed for {max_bytes}"
                )
            yield piece
        if declared is not None and received < declared and (not stop_at_max or received < max_bytes):
            raise TruncatedBody(f"got {received} of {declared} bytes")

    def backoff(self, attempt: int, problem: str, retry_after_s: float = 0.0) -> None:
        """Wait before attempt number `attempt` (1-based), longer each time, as `Retry-After` asks."""
        delay = min(self.options.backoff_s * 2 ** (attempt - 1), self.options.max_backoff_s)
        delay = max(delay * random.uniform(0.75, 1.0), min(retry_after_s, self.options.max_backoff_s))
        log.info("retrying in %.2fs after %s", delay, problem)
        if self._closed.wait(delay):
            raise RemoteUnavailable("transport closed while waiting to retry")

    def ping(self, url: str) -> bool:
        """Whether `url` answers below 400 (or 401: a registry's `/v2/` asking for a login is up)
        within the connect timeout. Never retried, never raises: a health check's question."""
        timeout_s = self.options.connect_timeout_s
        try:
            response = self.session.get(url, timeout=(timeout_s, timeout_s), stream=True, allow_redirects=False)
        except (requests.RequestException, urllib3.exceptions.HTTPError, ValueError) as error:
            log.debug("ping %s: %s", url, _describe(error))
            return False
        response.close()
        return response.status_code < 400 or response.status_code == 401

    def close(self) -> None:
        self._closed.set()
        self.session.close()


def _retry_after_s(response: requests.Response) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return float(value)
    except ValueError:
        return 0.0


def _tls_reason(error: Exception) -> str:
    text = str(error)
    for marker, reason in (
        ("CERTIFICATE_VERIFY_FAILED", "certificate not trusted (skip_verify to accept it)"),
        ("WRONG_VERSION_NUMBER", "the server does not speak TLS (plain HTTP?)"),
        ("doesn't match", "certificate is for another host name"),
    ):
        if marker in text:
            return reason
    return type(error).__name__


def content_length(response: requests.Response) -> int | None:
    """The declared body length, or None if absent or not a number (then only reading tells)."""
    try:
        return int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None


def _describe(error: Exception) -> str:
    """One short line for a requests exception (whose text nests urllib3's repr several deep)."""
    if isinstance(error, requests.Timeout | urllib3.exceptions.TimeoutError):
        return "timed out"
    if isinstance(error, TransferTooSlow):
        return f"too slow: {error}"
    if isinstance(error, TruncatedBody):
        return f"truncated body: {error}"
    if isinstance(error, requests.TooManyRedirects):
        return "too many redirects"
    if isinstance(
        error, requests.exceptions.InvalidURL | requests.exceptions.InvalidSchema | requests.exceptions.MissingSchema
    ):
        return "invalid URL (a redirect to somewhere unusable?)"
    if isinstance(error, ValueError):
        return f"invalid URL or answer ({error})"
    text = (
        str(error.__context__ or error) if isinstance(error, requests.exceptions.ChunkedEncodingError) else str(error)
    )
    for marker in (
        "Connection refused",
        "Connection reset",
        "Connection aborted",
        "IncompleteRead",
        "RemoteDisconnected",
    ):
        if marker in text:
            return marker.lower()
    return type(error).__name__


def _range_end(response: requests.Response) -> tuple[int, int] | None:
    """(last byte, total size) from `Content-Range: bytes a-b/total`, if the server said so."""
    value = response.headers.get("Content-Range", "")
    _unit, _, rest = value.partition(" ")
    span, _, total = rest.partition("/")
    try:
        return int(span.partition("-")[2]), int(total)
    except ValueError:
        return None


def range_header(offset: int, length: int) -> dict[str, str]:
    return {"Range": f"bytes={offset}-{offset + length - 1}"}


def slice_range(transport: HttpTransport, response: requests.Response, offset: int, length: int) -> bytes:
    """Bytes `offset..offset+length` from a 206 (already cut) or a 200 (the whole blob).

    Shorter than `length` only when the blob itself ends sooner; a body cut short in transit
    raises `TruncatedBody` so the transport fetches it again. Never reads more than the range
    needs: a 206 longer than asked is `BodyTooLarge`; of a 200, reading stops at the range's end.
    """
    if response.status_code != 206:
        return transport.read_body(response, offset + length, stop_at_max=True)[offset:]
    data = transport.read_body(response, length)
    end = _range_end(response)
    blob_ends_here = end is not None and end[0] + 1 == end[1] and len(data) == end[0] + 1 - offset
    if len(data) < length and not blob_ends_here:
        raise TruncatedBody(f"got {len(data)} of {length} bytes")
    return data
