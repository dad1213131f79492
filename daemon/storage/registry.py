"""The one OCI distribution client, used by `nydusify` (pull, push) and the daemon (blob ranges).

Synchronous and thread-safe, so the daemon can call it from worker threads and the builder from
plain code. What it promises:
- plain HTTP only for loopback hosts or when asked; TLS (optionally without verification) otherwise;
- anonymous first, then whatever the `WWW-Authenticate` challenge asks for: Basic with the
  configured or `~/.docker/config.json` credentials, or a Bearer token from the realm, cached
  until it expires; a refused login is an `AuthError` at once, never retried;
- connection errors, truncated bodies, 429 and 5xx retried with backoff (in `HttpTransport`);
- `mirrors` tried first for reads, each once, falling back to the origin;
- every blob and manifest fetched by digest is verified against it.
`RegistryBackend` adapts it to `BlobBackend`: bytes of a blob, nothing about files.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import os
import platform
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests

from daemon.storage import backend
from daemon.storage.http import (
    MAX_SMALL_BODY_BYTES,
    Body,
    HttpOptions,
    HttpTransport,
    RemoteError,
    RemoteUnavailable,
    TruncatedBody,
    http_options_from_config,
    range_header,
    slice_range,
)
from rafs import oci
from rafs.errors import ConfigError
from rafs.oci import ImageReference, Platform

log = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join((*oci.MANIFEST_TYPES, *oci.INDEX_TYPES))
DOCKER_HUB_HOST = "registry-1.docker.io"
TOKEN_MARGIN_S = 10.0
MAX_MANIFEST_BYTES = 4 << 20  # manifests and indexes, as containerd caps them
MAX_SMALL_BLOB_BYTES = 16 << 20  # image configs read into memory
UNBOUNDED_BYTES = 1 << 62
# Above the largest bootstrap the project builds (1,000,000 files: about 200 MiB).
DEFAULT_BOOTSTRAP_SIZE_LIMIT = 512 << 20
DEFAULT_TOKEN_LIFETIME_S = 60.0


class RegistryError(RemoteError):
    """The registry refused or failed a request; carries the URL, repository and digest."""

    def __init__(self, message: str, *, url: str = "", status: int = 0, repo: str = "", digest: str = "") -> None:
        context = ", ".join(part for part in (repo and f"repo {repo}", digest and f"digest {digest}") if part)
        super().__init__(f"{message} [{context}]" if context else message, url=url, status=status)
        self.repo = repo
        self.digest = digest
        self.blob_id = digest.partition(":")[2]


class AuthError(RegistryError, backend.AuthError):
    """The registry or its token server refused our credentials (or we had none to offer)."""


class BlobNotFound(RegistryError, backend.BlobNotFound):
    """The repository has no blob of that digest."""


class ManifestNotFound(RegistryError):
    """The repository has no manifest for that tag or digest."""


class RangeNotSatisfiable(RegistryError, backend.RangeNotSatisfied):
    """The blob ends before the range asked for."""


class DigestMismatch(RegistryError):
    """Content whose sha256 differs from the digest it was fetched by: altered or wrong content."""


@dataclass(frozen=True)
class Mirror:
    """A registry mirror (`host[:port]`) tried before the origin for reads."""

    host: str
    plain_http: bool | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries; the defaults suit a public TLS registry or a loopback one."""

    http: HttpOptions = field(default_factory=HttpOptions)
    plain_http: bool | None = None  # None: plain HTTP for loopback hosts, TLS for the rest
    username: str = ""
    password: str = ""
    registry_token: str = ""  # a bearer token used as is (nydusd's `registry_token`)
    docker_config: str | None = None  # None: $DOCKER_CONFIG/config.json or ~/.docker/config.json; "": none
    mirrors: tuple[Mirror, ...] = ()
    platforms: tuple[Platform, ...] = ()  # empty: the host's, then linux/amd64
    upload_chunk_size: int = 0  # 0: monolithic uploads; else PATCH chunks of this size
    bootstrap_size_limit: int = DEFAULT_BOOTSTRAP_SIZE_LIMIT  # `nydusd --image`: the largest bootstrap accepted


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


@dataclass(frozen=True)
class _Endpoint:
    host: str
    base_url: str  # scheme://host/v2/
    headers: Mapping[str, str]
    is_mirror: bool


@dataclass(frozen=True)
class _Challenge:
    scheme: str  # "basic" or "bearer", lowercased
    params: Mapping[str, str]


_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"|([A-Za-z_]+)=([^\s,]+)')


def parse_challenge(header: str) -> _Challenge | None:
    """`Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`; None if neither."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() not in ("basic", "bearer"):
        return None
    params = {}
    for match in _CHALLENGE_PARAM.finditer(rest):
        key = match.group(1) or match.group(3)
        params[key.lower()] = match.group(2) if match.group(1) else match.group(4)
    return _Challenge(scheme.lower(), params)


def is_loopback(host: str) -> bool:
    """Whether `host` (no port) is this machine: the only place plain HTTP is the default."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_platforms() -> tuple[Platform, ...]:
    """The host's platform first, then linux/amd64 (what most single-platform images are)."""
    machine = platform.machine().lower()
    architecture = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)
    wanted = [Platform("linux", architecture)]
    if architecture != "amd64":
        wanted.append(Platform("linux", "amd64"))
    return tuple(wanted)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def docker_config_credentials(path: str, registry: str) -> tuple[str, str] | None:
    """(username, password) for `registry` from a docker `config.json` `auths` entry, if any.

    Keys may be `host`, `https://host` or `https://host/v1/`; credential helpers (`credsStore`)
    are not run: only inline `auth` or `username`/`password` entries are read.
    """
    try:
        with open(path, "rb") as file:
            config = json.load(file)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ConfigError(f"docker config {path}: {error}") from None
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return None
    aliases = {registry}
    if registry in (oci.DOCKER_HUB, DOCKER_HUB_HOST):
        aliases |= {oci.DOCKER_HUB, DOCKER_HUB_HOST, "index.docker.io"}
    for key, entry in auths.items():
        host = urlsplit(key).netloc if "://" in key else key.split("/", 1)[0]
        if host not in aliases or not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except ValueError:
                raise ConfigError(f"docker config {path}: auths.{key}.auth is not base64 of user:password") from None
            return username, password
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return entry["username"], entry["password"]
    return None


def _host_without_port(host_port: str) -> str:
    if host_port.startswith("["):
        return host_port[1 : host_port.index("]")]
    return host_port.rsplit(":", 1)[0]


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


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
        self._lock = threading.Lock()
        self._challenges: dict[str, _Challenge] = {}
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._docker_logins: dict[str, tuple[str, str] | None] = {}

    # ---- endpoints and authentication

    def _scheme(self, host_port: str, plain_http: bool | None) -> str:
        if plain_http is None:
            plain_http = self.options.plain_http
        if plain_http is None:
            plain_http = is_loopback(_host_without_port(host_port))
        return "http" if plain_http else "https"

    def _endpoints(self, ref: ImageReference, *, read: bool) -> list[_Endpoint]:
        endpoints = []
        if read:
            for mirror in self.options.mirrors:
                scheme = self._scheme(mirror.host, mirror.plain_http)
                endpoints.append(_Endpoint(mirror.host, f"{scheme}://{mirror.host}/v2/", mirror.headers, True))
        host = DOCKER_HUB_HOST if ref.registry == oci.DOCKER_HUB else ref.registry
        endpoints.append(_Endpoint(host, f"{self._scheme(host, None)}://{host}/v2/", {}, False))
        return endpoints

    def _credentials(self, host: str) -> tuple[str, str] | None:
        """The configured login, else the docker config's for `host` (read once per host)."""
        if self.options.username:
            return self.options.username, self.options.password
        if host not in self._docker_logins:
            path = self.options.docker_config
            if path is None:
                directory = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
                path = os.path.join(directory, "config.json")
            self._docker_logins[host] = docker_config_credentials(path, host) if path else None
        return self._docker_logins[host]

    def _auth_header(self, host: str, repo: str, actions: str, *, fresh: bool) -> dict[str, str]:
        """What to send for `host`: nothing until it has challenged us, then what it asked for."""
        with self._lock:
            challenge = self._challenges.get(host)
            if challenge is None:
                return {}
            if challenge.scheme == "basic":
                credentials = self._credentials(host)
                if credentials is None:
                    raise AuthError(f"registry {host} asks for a login and none is configured", url=host, repo=repo)
                token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
                return {"Authorization": f"Basic {token}"}
            if self.options.registry_token:
                return {"Authorization": f"Bearer {self.options.registry_token}"}
            return {"Authorization": f"Bearer {self._bearer_token(host, challenge, repo, actions, fresh=fresh)}"}

    def _bearer_token(self, host: str, challenge: _Challenge, repo: str, actions: str, *, fresh: bool) -> str:
        """A token for `repository:repo:actions` from the challenge's realm, cached until it expires."""
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise AuthError(f"registry {host} sent a Bearer challenge without a usable realm {realm!r}", repo=repo)
        service = challenge.params.get("service", "")
        scope = f"repository:{repo}:{actions}"
        key = (realm, service, scope)
        cached = self._tokens.get(key)
        if cached is not None and not fresh and time.monotonic() < cached[1]:
            return cached[0]
        params = {"scope": scope}
        if service:
            params["service"] = service
        headers = {}
        credentials = self._credentials(host)
        if credentials is not None:
            params["account"] = credentials[0]
            basic = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        url = _with_query(realm, **params)
        response = self.transport.request("GET", url, headers=headers)
        if response.status_code in (401, 403):
            who = f"user {credentials[0]!r}" if credentials else "anonymous access"
            raise AuthError(f"token server refused {who}: HTTP {response.status_code}", url=realm, repo=repo)
        if response.status_code != 200:
            raise AuthError(f"token server answered HTTP {response.status_code}", url=realm, repo=repo)
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
            lifetime_s = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME_S)
        except (ValueError, AttributeError, TypeError):
            token, lifetime_s = None, 0.0
        if not isinstance(token, str) or not token:
            raise AuthError("token server sent no token", url=realm, repo=repo)
        margin_s = min(TOKEN_MARGIN_S, lifetime_s / 2)  # renew early, but keep short-lived tokens useful
        self._tokens[key] = (token, time.monotonic() + lifetime_s - margin_s)
        return token

    def _send(
        self,
        method: str,
        endpoint: _Endpoint,
        url: str,
        repo: str,
        *,
        actions: str = "pull",
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        retry: bool = True,
        on_success: Callable[[requests.Response], None] | None = None,
    ) -> requests.Response:
        """One request with the auth dance: at most one 401 is answered, a second is an `AuthError`."""
        sent_auth = self._auth_header(endpoint.host, repo, actions, fresh=False)
        all_headers = {**endpoint.headers, **(headers or {})}
        response = self.transport.request(
            method, url, headers={**all_headers, **sent_auth}, body=body, retry=retry, on_success=on_success
        )
        if response.status_code != 401:
            return response
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None:
            raise AuthError(f"{method} refused with HTTP 401 and no usable challenge", url=url, repo=repo)
        with self._lock:
            known = self._challenges.get(endpoint.host)
            self._challenges[endpoint.host] = challenge
        if sent_auth and known == challenge and challenge.scheme == "basic":
            raise AuthError(f"registry {endpoint.host} refused the credentials", url=url, repo=repo)
        retry_auth = self._auth_header(endpoint.host, repo, actions, fresh=True)
        response = self.transport.request(
            method, url, headers={**all_headers, **retry_auth}, body=body, retry=retry, on_success=on_success
        )
        if response.status_code == 401:
            detail = _registry_message(self.transport, response)
            raise AuthError(f"registry {endpoint.host} refused the credentials: {detail}", url=url, repo=repo)
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
        """A read from the first mirror that answers 2xx, else from the origin."""
        endpoints = self._endpoints(ref, read=True)
        for endpoint in endpoints[:-1]:
            try:
                response = self._send(
                    method, endpoint, endpoint.base_url + path, ref.repository,
                    headers=headers, retry=False, on_success=on_success,
                )  # fmt: skip
            except (RemoteError, backend.BackendError) as error:
                log.info("mirror %s failed (%s); trying the next", endpoint.host, error)
                continue
            if 200 <= response.status_code < 300:
                return response
            log.info("mirror %s answered HTTP %d; trying the next", endpoint.host, response.status_code)
            response.close()
        origin = endpoints[-1]
        return self._send(
            method, origin, origin.base_url + path, ref.repository, headers=headers, on_success=on_success
        )

    def _fail(
        self, response: requests.Response, kind: str, what: str, ref: ImageReference, digest: str = ""
    ) -> RegistryError:
        """The named error for an answer we cannot use; `kind` is "blob", "manifest" or "upload"."""
        status = response.status_code
        detail = _registry_message(self.transport, response)
        if status in (401, 403):
            return AuthError(f"{what}: access denied: {detail}", url=response.url, status=status, repo=ref.repository)
        if status == 404 and kind == "blob":
            return BlobNotFound(
                f"{what}: not found", url=response.url, status=status, repo=ref.repository, digest=digest
            )
        if status == 404 and kind == "manifest":
            return ManifestNotFound(
                f"{what}: not found", url=response.url, status=status, repo=ref.repository, digest=digest
            )
        if status == 416:
            return RangeNotSatisfiable(
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
        origin = self._endpoints(ref, read=False)[-1]
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
            origin = self._endpoints(ref, read=False)[-1]
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
        """Stream a blob to `path` (via a temporary name), verified; returns its size.

        A body cut short (or too slow) is fetched again from the start: the temporary file is
        rewritten. More than `max_bytes` is `BodyTooLarge`, and nothing is left on disk.
        """
        temp_path = f"{path}.part"
        hasher: list[hashlib._Hash] = []

        def save(response: requests.Response) -> None:
            hasher.clear()
            sha = hashlib.sha256()
            received = 0
            with open(temp_path, "wb") as output:
                for data in self.transport.body_pieces(response, max_bytes):
                    output.write(data)
                    sha.update(data)
                    received += len(data)
                    if progress is not None:
                        progress(len(data))
            hasher.append(sha)

        try:
            response = self._read("GET", ref, f"{ref.repository}/blobs/{digest}", on_success=save)
            if not hasher:
                raise self._fail(response, "blob", f"blob {digest}", ref, digest)
            if "sha256:" + hasher[0].hexdigest() != digest:
                raise DigestMismatch(
                    "blob content differs from its digest", url=response.url, repo=ref.repository, digest=digest
                )
            os.replace(temp_path, path)
        finally:
            if os.path.exists(temp_path):
                os.unlink(temp_path)
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
            raise RangeNotSatisfiable(
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
        origin = self._endpoints(ref, read=False)[-1]
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
            "PUT", origin, _with_query(location, digest=digest), ref.repository,
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


class RegistryBackend:
    """`BlobBackend` over one repository: blob `X` is the layer `sha256:X`."""

    def __init__(self, client: RegistryClient, image: ImageReference) -> None:
        self.client = client
        self.image = image

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> RegistryBackend:
        """From nydusd-style `device.backend.config` for type `registry`; unknown keys are errors."""
        where = "device.backend.config."
        allowed = ("scheme", "host", "repo", "auth", "registry_token", "mirrors", "bootstrap_size_limit")
        http_options = http_options_from_config(config, where, allowed)
        host, repo = config.get("host"), config.get("repo")
        if not isinstance(host, str) or not host:
            raise ConfigError(f"config key {where}host: a registry host[:port] is required")
        if not isinstance(repo, str) or not repo:
            raise ConfigError(f"config key {where}repo: a repository name is required")
        scheme = config.get("scheme", "")
        if scheme not in ("", "http", "https"):
            raise ConfigError(f"config key {where}scheme: http or https is required")
        username = password = ""
        auth = config.get("auth", "")
        if not isinstance(auth, str):
            raise ConfigError(f"config key {where}auth: base64 of user:password is required")
        if auth:
            try:
                username, _, password = base64.b64decode(auth).decode().partition(":")
            except ValueError:
                raise ConfigError(f"config key {where}auth: not base64 of user:password") from None
        token = config.get("registry_token", "")
        if not isinstance(token, str):
            raise ConfigError(f"config key {where}registry_token: a string is required")
        size_limit = config.get("bootstrap_size_limit", DEFAULT_BOOTSTRAP_SIZE_LIMIT)
        if isinstance(size_limit, bool) or not isinstance(size_limit, int) or size_limit < 1:
            raise ConfigError(f"config key {where}bootstrap_size_limit: a positive number of bytes is required")
        options = RegistryOptions(
            http=http_options,
            plain_http=None if not scheme else scheme == "http",
            username=username,
            password=password,
            registry_token=token,
            mirrors=_mirrors(config.get("mirrors", []), where + "mirrors"),
            bootstrap_size_limit=size_limit,
        )
        try:
            image = ImageReference.parse(f"{host}/{repo}")
        except oci.InvalidReference as error:
            raise ConfigError(f"config key {where}repo: {error}") from None
        return cls(RegistryClient(options), image)

    def _digest(self, blob_id: str) -> str:
        backend.check_blob_id(blob_id)
        return f"sha256:{blob_id}"

    def read_range(self, blob_id: str, offset: int, length: int) -> bytes:
        return self.client.read_blob_range(self.image, self._digest(blob_id), offset, length)

    def blob_size(self, blob_id: str) -> int:
        digest = self._digest(blob_id)
        size = self.client.blob_size(self.image, digest)
        if size is None:
            raise BlobNotFound("blob not found", repo=self.image.repository, digest=digest)
        return size

    def close(self) -> None:
        self.client.close()


def _mirrors(value: object, where: str) -> tuple[Mirror, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"config key {where}: a list is required")
    mirrors = []
    for position, item in enumerate(value):
        here = f"{where}[{position}]."
        if not isinstance(item, dict):
            raise ConfigError(f"config key {where}[{position}]: an object is required")
        for key in item:
            if key not in ("host", "headers"):
                raise ConfigError(f"config key {here}{key}: unknown")
        host, headers = item.get("host"), item.get("headers", {})
        if not isinstance(host, str) or not host:
            raise ConfigError(f"config key {here}host: a URL or host[:port] is required")
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise ConfigError(f"config key {here}headers: an object of strings is required")
        plain_http = None
        if "://" in host:
            parts = urlsplit(host)
            plain_http, host = parts.scheme == "http", parts.netloc
        mirrors.append(Mirror(host, plain_http, headers))
    return tuple(mirrors)
