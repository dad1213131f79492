"""`RegistryClient`: the one OCI distribution client (manifests, blobs, ranges, uploads).

Used by `nydusify` (pull, push) and the daemon (blob ranges, `--image`). Synchronous and
thread-safe, so the daemon can call it from worker threads and the builder from plain code.
What it promises:
- plain HTTP only for loopback hosts or when asked; TLS (optionally without verification) otherwise;
- authentication as `daemon.storage.registry.auth` describes;
- connection errors, truncated bodies, 429 and 5xx retried with backoff (in `HttpTransport`);
- `mirrors` tried first for reads, each once, falling back to the origin; a mirror failing
  `failure_limit` times is skipped until its ping answers, and blob ranges go to a mirror only
  once it serves them from its cache (`daemon.storage.registry.mirrors`);
- with `proxy`, blob reads go through Dragonfly's proxy by its rules (`...registry.proxy`);
- a read marked origin-only (`daemon.storage.purpose`) skips mirrors and proxy;
- every blob and manifest fetched by digest is verified against it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import IO
from urllib.parse import urljoin

import requests

from daemon.storage import backend
from daemon.storage.health import HealthCheck
from daemon.storage.options import Mirror, Proxy, RegistryOptions
from daemon.storage.purpose import ReadPurpose, current_read
from daemon.storage.registry.auth import DOCKER_HUB_HOST, Authenticator, parse_challenge, with_query
from daemon.storage.registry.errors import (
    DigestMismatch,
    ManifestNotFound,
    RegistryAuthError,
    RegistryBlobNotFound,
    RegistryError,
    RegistryRangeNotSatisfied,
)
from daemon.storage.registry.mirrors import Endpoint, MirrorRoute, Probe, RangeGate
from daemon.storage.registry.proxy import (
    ERROR_TYPE_HEADER,
    ProxyForbidden,
    ProxyRateLimited,
    ProxyRoute,
    ProxyUnavailable,
)
from daemon.storage.transport import (
    MAX_SMALL_BODY_BYTES,
    RETRY_STATUSES,
    Body,
    HttpTransport,
    RemoteError,
    RemoteUnavailable,
    TruncatedBody,
    range_header,
    slice_range,
)
from rafs import oci
from rafs.oci import ImageReference, host_platforms, sha256_digest
from rafs.outputs import atomic_file

log = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join((*oci.MANIFEST_TYPES, *oci.INDEX_TYPES))
MAX_MANIFEST_BYTES = 4 << 20  # manifests and indexes, as containerd caps them
MAX_SMALL_BLOB_BYTES = 16 << 20  # image configs read into memory
UNBOUNDED_BYTES = 1 << 62


@dataclass(frozen=True)
class Manifest:
    """A manifest or index exactly as the registry sent it, with its digest."""

    digest: str
    media_type: str
    data: bytes
    document: dict[str, object]

    @property
    def is_index(self) -> bool:
        return self.media_type in oci.INDEX_TYPES or "manifests" in self.document


def is_loopback(host: str) -> bool:
    """Whether `host` (no port) is this machine: the only place plain HTTP is the default."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_without_port(host_port: str) -> str:
    if host_port.startswith("["):
        return host_port[1 : host_port.index("]")]
    return host_port.rsplit(":", 1)[0]


def _registry_message(transport: HttpTransport, response: requests.Response) -> str:
    """`CODE: message` from the distribution error body (its first 4 MiB at most), or the HTTP reason."""
    try:
        cached = response.__dict__.get("_content")  # read (bounded) by the transport already?
        body = (
            cached
            if isinstance(cached, bytes)
            else transport.read_body(response, MAX_SMALL_BODY_BYTES, stop_at_max=True)
        )
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    except (ValueError, AttributeError, IndexError, TypeError, requests.RequestException, TruncatedBody, RemoteError):
        return response.reason or ""
    finally:
        response.close()


class RegistryClient:
    """Talks the OCI distribution API to any number of registries over one pooled transport."""

    def __init__(self, options: RegistryOptions | None = None) -> None:
        self.options = options or RegistryOptions()
        self.transport = HttpTransport(self.options.http)
        self.auth = Authenticator(self.options, self.transport)
        self.mirrors = [self._mirror_route(mirror) for mirror in self.options.mirrors]
        self.proxy = self._proxy_route(self.options.proxy) if self.options.proxy is not None else None

    # ---- endpoints and authentication

    def _scheme(self, host_port: str, plain_http: bool | None) -> str:
        if plain_http is None:
            plain_http = self.options.plain_http
        if plain_http is None:
            plain_http = is_loopback(_host_without_port(host_port))
        return "http" if plain_http else "https"

    def _mirror_route(self, mirror: Mirror) -> MirrorRoute:
        base = f"{self._scheme(mirror.host, mirror.plain_http)}://{mirror.host}"
        health = HealthCheck(
            f"mirror {mirror.host}",
            mirror.ping_url or f"{base}/v2/",
            self.transport.ping,
            interval_s=mirror.health_check_interval_s,
            pause_elapsed_s=mirror.health_check_pause_elapsed_s,
            failure_limit=mirror.failure_limit,
            recover_only=True,
        )
        gate = RangeGate(self.options.mirror_probe_interval_s, self.options.mirror_cold_wait_s)
        return MirrorRoute(Endpoint(mirror.host, f"{base}/v2/", mirror.headers, True), health, gate)

    def _proxy_route(self, proxy: Proxy) -> ProxyRoute:
        health = HealthCheck(
            f"proxy {proxy.url}",
            proxy.ping_url,
            self.transport.ping,
            interval_s=proxy.check_interval_s,
            pause_elapsed_s=proxy.check_pause_elapsed_s,
        )
        return ProxyRoute(proxy, health)

    def health_checks(self) -> list[HealthCheck]:
        """The pings someone must run while this client serves (see `daemon.storage.health`)."""
        checks = [mirror.health for mirror in self.mirrors]
        if self.proxy is not None:
            checks.append(self.proxy.health)
        return checks

    def _origin(self, ref: ImageReference) -> Endpoint:
        host = DOCKER_HUB_HOST if ref.registry == oci.DOCKER_HUB else ref.registry
        return Endpoint(host, f"{self._scheme(host, None)}://{host}/v2/", {}, False)

    def _send(
        self,
        method: str,
        endpoint: Endpoint,
        url: str,
        repo: str,
        *,
        actions: str = "pull",
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        retry: bool = True,
        on_success: Callable[[requests.Response], None] | None = None,
        proxy: ProxyRoute | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """One request with the auth dance: at most one 401 is answered, a second is an `RegistryAuthError`.

        Through `proxy`, every answer comes back as it is (nothing is retried): its rules decide.
        """
        sent_auth = self.auth.header(endpoint.host, repo, actions, fresh=False)
        all_headers = {**endpoint.headers, **(headers or {})}
        proxies = proxy.proxies if proxy is not None else None
        retry_statuses = frozenset() if proxy is not None else RETRY_STATUSES
        response = self.transport.request(
            method, url, headers={**all_headers, **sent_auth}, body=body, retry=retry, on_success=on_success,
            proxies=proxies, retry_statuses=retry_statuses, stream=stream,
        )  # fmt: skip
        if response.status_code != 401:
            return response
        response.close()  # the connection goes back to the pool before the retry
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None:
            raise RegistryAuthError(f"{method} refused with HTTP 401 and no usable challenge", url=url, repo=repo)
        known = self.auth.remember(endpoint.host, challenge)
        if sent_auth and known == challenge and challenge.scheme == "basic":
            raise RegistryAuthError(f"registry {endpoint.host} refused the credentials", url=url, repo=repo)
        retry_auth = self.auth.header(endpoint.host, repo, actions, fresh=True)
        response = self.transport.request(
            method, url, headers={**all_headers, **retry_auth}, body=body, retry=retry, on_success=on_success,
            proxies=proxies, retry_statuses=retry_statuses, stream=stream,
        )  # fmt: skip
        if response.status_code == 401:
            detail = _registry_message(self.transport, response)
            raise RegistryAuthError(f"registry {endpoint.host} refused the credentials: {detail}", url=url, repo=repo)
        return response

    def _read(
        self,
        method: str,
        ref: ImageReference,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        on_success: Callable[[requests.Response], None] | None = None,
    ) -> requests.Response:
        """A read through the proxy (blobs only), else from the first mirror that answers 2xx,
        else from the origin. A blob GET goes to a mirror only once the mirror serves the blob
        from its cache (see `RangeGate`): a range, or a whole blob such as a bootstrap layer,
        read from a pull-through mirror still caching it would pull a copy of its own."""
        origin = self._origin(ref)
        context = current_read()
        if not context.origin_only:
            if self.proxy is not None and "/blobs/" in path:
                response = self._read_via_proxy(method, origin, ref, path, headers, on_success, context.purpose)
                if response is not None:
                    return response
            for mirror in self.mirrors:
                response = self._read_from_mirror(mirror, method, ref, path, headers, on_success)
                if response is not None:
                    return response
        return self._send(
            method, origin, origin.base_url + path, ref.repository, headers=headers, on_success=on_success
        )

    def _read_from_mirror(
        self,
        mirror: MirrorRoute,
        method: str,
        ref: ImageReference,
        path: str,
        headers: Mapping[str, str] | None,
        on_success: Callable[[requests.Response], None] | None,
    ) -> requests.Response | None:
        """The mirror's 2xx answer, or None to go past it (skipped, failed, or without the blob)."""
        if not mirror.health.usable():
            return None
        endpoint = mirror.endpoint
        _, blobs, digest = path.rpartition("/blobs/")
        gated = method == "GET" and bool(blobs) and digest.startswith("sha256:")
        if gated and mirror.gate.ready(digest, lambda: self._probe(mirror, ref, path)) != Probe.RANGES:
            return None
        if method == "HEAD" and blobs and not mirror.gate.is_ready(digest):
            return None  # a pull-through registry answers a HEAD of a blob it lacks by copying it whole
        try:
            response = self._send(
                method, endpoint, endpoint.base_url + path, ref.repository,
                headers=headers, retry=False, on_success=on_success,
            )  # fmt: skip
        except RegistryAuthError as error:
            log.info("mirror %s refused us (%s); trying the next", endpoint.host, error)
            return None
        except (RemoteError, backend.BackendError) as error:
            log.info("mirror %s failed (%s); trying the next", endpoint.host, error)
            mirror.health.failed(str(error))
            return None
        if 200 <= response.status_code < 300:
            mirror.health.succeeded()
            if gated and response.status_code == 200 and "Range" in (headers or {}):
                mirror.gate.went_cold(digest)  # read only as far as needed (`slice_range`), then dropped
            return response
        log.info("mirror %s answered HTTP %d; trying the next", endpoint.host, response.status_code)
        response.close()
        return None

    def _probe(self, mirror: MirrorRoute, ref: ImageReference, path: str) -> Probe:
        """Whether `mirror` serves ranges of the blob at `path` yet: a one-byte range GET whose
        answer is closed unread. Not a HEAD: docker-registry answers a HEAD of an uncached blob
        by copying the whole blob from the origin and discarding it; a GET's copy stops soon
        after we hang up."""
        endpoint = mirror.endpoint
        try:
            response = self._send(
                "GET", endpoint, endpoint.base_url + path, ref.repository, headers={"Range": "bytes=0-0"},
                retry=False, stream=True,
            )  # fmt: skip
        except RegistryAuthError:
            return Probe.ABSENT
        except (RemoteError, backend.BackendError) as error:
            mirror.health.failed(str(error))
            return Probe.FAILED
        response.close()
        if response.status_code == 206:
            mirror.health.succeeded()
            return Probe.RANGES
        return Probe.COLD if response.status_code == 200 else Probe.ABSENT

    def ask_mirrors_to_cache(self, ref: ImageReference, digest: str) -> None:
        """Ask each usable mirror about blob `digest` once, without waiting: a pull-through mirror
        that has not cached it starts now. Asked at mount for every blob of the image, the mirror
        caches them side by side instead of one after another as reads reach them."""
        if self.proxy is not None:
            return
        path = f"{ref.repository}/blobs/{digest}"
        for mirror in self.mirrors:
            if mirror.health.usable():
                mirror.gate.ask_once(digest, partial(self._probe, mirror, ref, path))

    def mirror_serves(self, index: int, ref: ImageReference, digest: str) -> Probe:
        """Whether mirror `index` serves blob `digest` from its cache, after waiting for it as a
        read would (up to `mirror_cold_wait_s`); asking is what sets a pull-through mirror caching."""
        mirror = self.mirrors[index]
        path = f"{ref.repository}/blobs/{digest}"
        return mirror.gate.ready(digest, lambda: self._probe(mirror, ref, path))

    def _read_via_proxy(
        self,
        method: str,
        origin: Endpoint,
        ref: ImageReference,
        path: str,
        headers: Mapping[str, str] | None,
        on_success: Callable[[requests.Response], None] | None,
        purpose: ReadPurpose,
    ) -> requests.Response | None:
        """The proxy's answer, or None to read from the origin instead (see `...registry.proxy`)."""
        proxy = self.proxy
        assert proxy is not None
        if not proxy.health.usable():
            if not proxy.config.fallback:
                raise ProxyUnavailable(
                    "the proxy does not answer its ping, and fallback is off", url=proxy.config.url, repo=ref.repository
                )
            return None
        url = proxy.url_for(origin.base_url + path)
        try:
            response = self._send(
                method, origin, url, ref.repository,
                headers={**(headers or {}), **proxy.headers(purpose)}, retry=False, on_success=on_success, proxy=proxy,
            )  # fmt: skip
        except RegistryAuthError:
            raise
        except (RemoteError, backend.BackendError) as error:
            if not proxy.config.fallback:
                raise ProxyUnavailable(
                    f"the proxy failed ({error.message}), and fallback is off",
                    url=proxy.config.url,
                    repo=ref.repository,
                ) from None
            log.info("proxy failed (%s): reading from the origin", error)
            return None
        status = response.status_code
        made_by_proxy = response.headers.get(ERROR_TYPE_HEADER, "").lower() == "proxy"
        if made_by_proxy and status == 403:
            response.close()
            raise ProxyForbidden(
                "the proxy refused the read (HTTP 403)", status=403, url=proxy.config.url, repo=ref.repository
            )
        if made_by_proxy and status == 429:
            response.close()
            if purpose is ReadPurpose.PREFETCH:
                raise ProxyRateLimited("the proxy limits us (HTTP 429): prefetch gives this read up", status=429,
                                       url=proxy.config.url, repo=ref.repository)  # fmt: skip
            waited_s = proxy.origin_limiter.wait()
            log.info("proxy limits us (HTTP 429): reading from the origin (after %.2f s at 1 read/s)", waited_s)
            return None
        if status >= 500 or status == 429:
            response.close()
            if not proxy.config.fallback:
                raise ProxyUnavailable(f"the proxy answered HTTP {status}, and fallback is off", status=status,
                                       url=proxy.config.url, repo=ref.repository)  # fmt: skip
            log.info("proxy answered HTTP %d: reading from the origin", status)
            return None
        return response

    def _fail(
        self, response: requests.Response, kind: str, what: str, ref: ImageReference, digest: str = ""
    ) -> RegistryError:
        """The named error for an answer we cannot use; `kind` is "blob", "manifest" or "upload"."""
        status = response.status_code
        detail = _registry_message(self.transport, response)
        if status in (401, 403):
            return RegistryAuthError(
                f"{what}: access denied: {detail}", url=response.url, status=status, repo=ref.repository
            )
        if status == 404 and kind == "blob":
            return RegistryBlobNotFound(
                f"{what}: not found", url=response.url, status=status, repo=ref.repository, digest=digest
            )
        if status == 404 and kind == "manifest":
            return ManifestNotFound(
                f"{what}: not found", url=response.url, status=status, repo=ref.repository, digest=digest
            )
        if status == 416:
            return RegistryRangeNotSatisfied(
                f"{what}: range past the end", url=response.url, repo=ref.repository, digest=digest
            )
        return RegistryError(
            f"{what}: HTTP {status} {detail}".rstrip(),
            url=response.url,
            status=status,
            repo=ref.repository,
            digest=digest,
        )

    # ---- manifests

    def get_manifest(self, ref: ImageReference) -> Manifest:
        """The manifest or index `ref` names, verified against `ref.digest` when it has one."""
        result: list[bytes] = []
        response = self._read(
            "GET",
            ref,
            f"{ref.repository}/manifests/{ref.reference}",
            headers={"Accept": MANIFEST_ACCEPT},
            on_success=lambda r: result.append(self.transport.read_body(r, MAX_MANIFEST_BYTES)),
        )
        if not result:
            raise self._fail(response, "manifest", f"manifest {ref.reference}", ref, ref.digest)
        data = result[0]
        digest = sha256_digest(data)
        if ref.digest and digest != ref.digest:
            raise DigestMismatch(
                f"manifest content has digest {digest}", url=response.url, repo=ref.repository, digest=ref.digest
            )
        try:
            document = json.loads(data)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise RegistryError("manifest is not a JSON object", url=response.url, repo=ref.repository, digest=digest)
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        media_type = str(document.get("mediaType") or content_type)
        return Manifest(digest, media_type, data, document)

    def get_image_manifest(self, ref: ImageReference) -> Manifest:
        """The image manifest for this host's platform, following an index if `ref` names one."""
        manifest = self.get_manifest(ref)
        if not manifest.is_index:
            return manifest
        descriptor = oci.select_manifest(manifest.document, self.options.platforms or host_platforms())
        return self.get_manifest(ref.with_digest(str(descriptor["digest"])))

    def push_manifest(self, ref: ImageReference, data: bytes, media_type: str) -> str:
        """Put `data` under `ref`'s tag (or digest); returns the manifest's digest."""
        origin = self._origin(ref)
        url = f"{origin.base_url}{ref.repository}/manifests/{ref.reference}"
        response = self._send(
            "PUT", origin, url, ref.repository, actions="pull,push", headers={"Content-Type": media_type}, body=data
        )
        if response.status_code not in (200, 201):
            raise self._fail(response, "upload", f"manifest push {ref.reference}", ref)
        digest = sha256_digest(data)
        answered = response.headers.get("Docker-Content-Digest", digest)
        if answered != digest:
            raise DigestMismatch(
                f"registry stored the manifest as {answered}", url=url, repo=ref.repository, digest=digest
            )
        return digest

    # ---- blobs

    def blob_size(self, ref: ImageReference, digest: str, *, origin_only: bool = False) -> int | None:
        """The blob's size if the repository has it, else None (HEAD, so nothing is downloaded).

        `origin_only` skips the mirrors: before a push, only the target itself counts.
        """
        path = f"{ref.repository}/blobs/{digest}"
        if origin_only:
            origin = self._origin(ref)
            response = self._send("HEAD", origin, origin.base_url + path, ref.repository)
        else:
            response = self._read("HEAD", ref, path)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, "blob", f"blob {digest}", ref, digest)
        return int(response.headers.get("Content-Length", "0"))

    def read_blob(self, ref: ImageReference, digest: str, max_bytes: int = MAX_SMALL_BLOB_BYTES) -> bytes:
        """A small blob (a config) in memory, at most `max_bytes`, verified against its digest."""
        result: list[bytes] = []
        response = self._read(
            "GET",
            ref,
            f"{ref.repository}/blobs/{digest}",
            on_success=lambda r: result.append(self.transport.read_body(r, max_bytes)),
        )
        if not result:
            raise self._fail(response, "blob", f"blob {digest}", ref, digest)
        if sha256_digest(result[0]) != digest:
            raise DigestMismatch(
                "blob content differs from its digest", url=response.url, repo=ref.repository, digest=digest
            )
        return result[0]

    def download_blob(
        self,
        ref: ImageReference,
        digest: str,
        path: str,
        progress: Callable[[int], None] | None = None,
        max_bytes: int = UNBOUNDED_BYTES,
    ) -> int:
        """Stream a blob to `path` (`rafs.outputs.atomic_file`), verified; returns its size.

        A body cut short (or too slow) is fetched again from the start: the temporary file is
        rewritten. More than `max_bytes` is `BodyTooLarge`, and nothing is left on disk.
        """
        hasher: list[hashlib._Hash] = []
        with atomic_file(path) as output:

            def save(response: requests.Response) -> None:
                hasher.clear()
                output.seek(0)
                output.truncate()  # a retry starts the file again
                sha = hashlib.sha256()
                for data in self.transport.body_pieces(response, max_bytes):
                    output.write(data)
                    sha.update(data)
                    if progress is not None:
                        progress(len(data))
                hasher.append(sha)

            response = self._read("GET", ref, f"{ref.repository}/blobs/{digest}", on_success=save)
            if not hasher:
                raise self._fail(response, "blob", f"blob {digest}", ref, digest)
            if "sha256:" + hasher[0].hexdigest() != digest:
                raise DigestMismatch(
                    "blob content differs from its digest", url=response.url, repo=ref.repository, digest=digest
                )
        return os.path.getsize(path)

    def read_blob_range(self, ref: ImageReference, digest: str, offset: int, length: int) -> bytes:
        """Exactly `length` bytes of the blob from `offset` (one `Range` GET, redirects followed)."""
        if length <= 0:
            return b""
        result: list[bytes] = []
        response = self._read(
            "GET",
            ref,
            f"{ref.repository}/blobs/{digest}",
            headers=range_header(offset, length),
            on_success=lambda r: result.append(slice_range(self.transport, r, offset, length)),
        )
        if not result:
            raise self._fail(response, "blob", f"blob {digest} range {offset}+{length}", ref, digest)
        if len(result[0]) < length:
            raise RegistryRangeNotSatisfied(
                f"blob range {offset}+{length} is past the end", url=response.url, repo=ref.repository, digest=digest
            )
        return result[0]

    def push_blob(self, ref: ImageReference, digest: str, source: bytes | str) -> bool:
        """Upload a blob (bytes or a file path) unless the repository has it; True if uploaded.

        Each attempt is a whole upload session, so a failure mid-way restarts cleanly instead of
        resuming at an offset the registry may not have kept.
        """
        if self.blob_size(ref, digest, origin_only=True) is not None:
            return False
        attempts = self.options.http.retry_limit + 1
        for attempt in range(attempts):
            try:
                self._upload(ref, digest, source)
                return True
            except RemoteUnavailable as error:
                if attempt + 1 == attempts:
                    raise
                self.transport.backoff(attempt + 1, str(error))
        raise AssertionError("unreachable")

    def _upload(self, ref: ImageReference, digest: str, source: bytes | str) -> None:
        origin = self._origin(ref)
        start_url = f"{origin.base_url}{ref.repository}/blobs/uploads/"
        response = self._send("POST", origin, start_url, ref.repository, actions="pull,push", retry=False)
        if response.status_code != 202 or "Location" not in response.headers:
            raise self._fail(response, "upload", f"blob upload {digest}", ref, digest)
        location = urljoin(response.url, response.headers["Location"])
        size = len(source) if isinstance(source, bytes) else os.path.getsize(source)
        chunk_size = self.options.upload_chunk_size
        if chunk_size > 0:
            for offset, piece in _pieces(source, chunk_size):
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                }
                response = self._send(
                    "PATCH",
                    origin,
                    location,
                    ref.repository,
                    actions="pull,push",
                    headers=headers,
                    body=piece,
                    retry=False,
                )
                if response.status_code != 202 or "Location" not in response.headers:
                    raise self._fail(response, "upload", f"blob upload {digest} at {offset}", ref, digest)
                location = urljoin(response.url, response.headers["Location"])
            body: Body = b""
        else:
            body = source if isinstance(source, bytes) else _opener(source)
        headers = {"Content-Type": "application/octet-stream"}
        if chunk_size <= 0:
            headers["Content-Length"] = str(size)
        response = self._send(
            "PUT", origin, with_query(location, digest=digest), ref.repository,
            actions="pull,push", headers=headers, body=body, retry=False,
        )  # fmt: skip
        if response.status_code not in (201, 204):
            raise self._fail(response, "upload", f"blob upload {digest}", ref, digest)

    def close(self) -> None:
        self.transport.close()


def _opener(path: str) -> Callable[[], IO[bytes]]:
    return lambda: open(path, "rb")  # the transport closes it after each attempt


def _pieces(source: bytes | str, chunk_size: int) -> Iterator[tuple[int, bytes]]:
    if isinstance(source, bytes):
        for offset in range(0, len(source), chunk_size):
            yield offset, source[offset : offset + chunk_size]
        return
    with open(source, "rb") as file:
        offset = 0
        while piece := file.read(chunk_size):
            yield offset, piece
            offset += len(piece)
