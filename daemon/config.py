"""nydusd's JSON configuration, read into frozen dataclasses.

The layout follows nydusd's (`device.backend`, `device.cache`, `mode`, `digest_validate`,
`fs_prefetch`, ...). Reading is strict: a key this daemon does not know, a value of the wrong
type or a missing required key is a `ConfigError` naming the key by its dotted path, because a
silently ignored typo in a deployment file costs more than a refused start.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from daemon.jsonfields import Fields
from daemon.storage.options import (
    BackendConfig,
    HttpConfig,
    HttpOptions,
    LocalFsConfig,
    Mirror,
    Proxy,
    RegistryConfig,
    RegistryOptions,
)
from rafs.errors import ConfigError
from rafs.oci import ImageReference, InvalidReference

BACKEND_TYPES = ("localfs", "http", "registry")
CACHE_TYPES = ("blobcache", "")
MODES = ("direct", "cached")
FS_DRIVERS = ("fusedev", "erofs")
HTTP_KEYS = ("timeout", "connect_timeout", "min_transfer_rate", "retry_limit", "skip_verify", "headers")
REGISTRY_KEYS = ("scheme", "host", "repo", "auth", "registry_token", "mirrors", "proxy", "bootstrap_size_limit")
MIRROR_KEYS = (
    "host",
    "headers",
    "ping_url",
    "health_check_interval",
    "failure_limit",
    "health_check_pause_elapsed",
    "auth_through",
)
PROXY_KEYS = ("url", "ping_url", "check_interval", "check_pause_elapsed", "fallback", "use_http")


@dataclass(frozen=True)
class CacheConfig:
    """`type` "blobcache" keeps verified chunks in `work_dir`; "" keeps a small memory cache."""

    type: str = ""
    work_dir: str = ""
    size_limit: int = 0  # bytes on disk; 0 = unbounded. Least recently used blobs are evicted beyond it.


@dataclass(frozen=True)
class PrefetchConfig:
    """`fs_prefetch`: the prefetch list at mount, and the fetch pipeline's size.

    `enable` (default true, as nydus-snapshotter's default config has it) fetches the bootstrap's
    prefetch table (or `--prefetch-files`) in the background after mounting; `prefetch_all`
    then fetches every blob in full (default false here: on a large image it would fetch
    everything a start does not need). `threads_count` is how many range requests may be in
    flight at once, for on-demand reads, readahead and prefetch together (a quarter of them,
    at least one, are kept for on-demand reads); `merging_size` caps one request's bytes;
    `bandwidth_rate` (bytes/s, 0 = unlimited) paces prefetch only.
    """

    enable: bool = True
    threads_count: int = 8
    merging_size: int = 1 << 20
    bandwidth_rate: int = 0
    prefetch_all: bool = False


@dataclass(frozen=True)
class ReadaheadConfig:
    """`readahead`: this daemon's own knobs for guessing what a start needs (see `daemon.readahead`).

    `whole_file_max`: a file of at most this many bytes is fetched whole on its first open (0 =
    never); `window_max`: the largest window of sequential readahead in a file (0 = none);
    `adaptive_amplify`: scale `amplify_io` by how much of what it brought was read (false: the
    fixed window of Nydus).
    """

    whole_file_max: int = 256 << 20
    window_max: int = 32 << 20
    adaptive_amplify: bool = True  # scale `amplify_io` by the share of amplified bytes read


@dataclass(frozen=True)
class DaemonConfig:
    backend: BackendConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    mode: str = "direct"
    # "fusedev": nydusd answers every FUSE request of the tree; "erofs": the kernel's EROFS serves
    # the tree from metadata nydusd writes at mount, nydusd only the data device (`daemon.erofs_device`).
    fs_driver: str = "fusedev"
    # Chunks are verified when they enter the cache; true re-hashes every cache hit as well.
    digest_validate: bool = False
    iostats_files: bool = False  # per-file counters (`/api/v1/metrics/files`)
    access_pattern: bool = False  # first access per inode (`/api/v1/metrics/pattern`)
    latest_read_files: bool = False  # files read since the last ask (`/api/v1/metrics/files?latest=true`)
    enable_xattr: bool = True
    amplify_io: int = 1 << 20  # blob-order amplification of a demand miss, stored bytes
    fs_prefetch: PrefetchConfig = field(default_factory=PrefetchConfig)
    readahead: ReadaheadConfig = field(default_factory=ReadaheadConfig)
    # `device.backend` as written (decoded JSON): what `GET /api/v1/daemon` reports, credentials
    # blanked, in the user's own field names.
    backend_as_written: Mapping[str, object] = field(default_factory=dict, compare=False)


def _http_options(fields: Fields) -> HttpOptions:
    """nydusd's timeouts and retries (seconds as numbers), shared by `http` and `registry`."""
    defaults = HttpOptions()
    return HttpOptions(
        timeout_s=fields.number("timeout", defaults.timeout_s),
        connect_timeout_s=fields.number("connect_timeout", defaults.connect_timeout_s),
        min_rate_bytes_per_s=fields.number("min_transfer_rate", defaults.min_rate_bytes_per_s),
        retry_limit=fields.int("retry_limit", defaults.retry_limit),
        skip_verify=fields.bool("skip_verify", False),
        headers=fields.headers("headers"),
    )


def _url(fields: Fields, key: str, default: str | None = None) -> str:
    url = fields.str(key, default)
    if url and not url.startswith(("http://", "https://")):
        raise fields.error(key, f"expected an http:// or https:// URL, got {url!r}")
    return url


def _login(fields: Fields) -> tuple[str, str]:
    """`auth`: base64 of `user:password` (empty: none)."""
    auth = fields.str("auth", "")
    if not auth:
        return "", ""
    try:
        username, _, password = base64.b64decode(auth, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise fields.error("auth", "not base64 of user:password") from None
    return username, password


def _mirror(fields: Fields) -> Mirror:
    defaults = Mirror("")
    host = fields.str("host")
    if not host:
        raise fields.error("host", "expected a URL or host[:port], got ''")
    plain_http = None
    if "://" in host:
        parts = urlsplit(host)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise fields.error("host", f"expected an http:// or https:// URL or host[:port], got {host!r}")
        plain_http, host = parts.scheme == "http", parts.netloc
    return Mirror(
        host=host,
        plain_http=plain_http,
        headers=fields.headers("headers"),
        ping_url=_url(fields, "ping_url", ""),
        health_check_interval_s=fields.number("health_check_interval", defaults.health_check_interval_s),
        failure_limit=fields.int("failure_limit", defaults.failure_limit, 1),
        health_check_pause_elapsed_s=fields.number("health_check_pause_elapsed", defaults.health_check_pause_elapsed_s),
        auth_through=fields.bool("auth_through", False),
    )


def _proxy(fields: Fields) -> Proxy | None:
    """Nydus's `proxy` block; an empty `url` means no proxy, as in Nydus."""
    if fields.has("dragonfly_scheduler_endpoint"):
        raise fields.error("dragonfly_scheduler_endpoint", "Dragonfly's SDK mode is not supported; use its HTTP proxy")
    url = _url(fields, "url", "")
    defaults = Proxy("")
    proxy = Proxy(
        url=url,
        ping_url=_url(fields, "ping_url", ""),
        check_interval_s=fields.number("check_interval", defaults.check_interval_s),
        check_pause_elapsed_s=fields.number("check_pause_elapsed", defaults.check_pause_elapsed_s),
        fallback=fields.bool("fallback", defaults.fallback),
        use_http=fields.bool("use_http", defaults.use_http),
    )
    return proxy if url else None


def _registry(fields: Fields) -> RegistryConfig:
    host = fields.str("host")
    repo = fields.str("repo")
    if not host:
        raise fields.error("host", "expected a registry host[:port], got ''")
    try:
        ImageReference.parse(f"{host}/{repo}")
    except InvalidReference as error:
        raise fields.error("repo", str(error)) from None
    scheme = fields.str("scheme", "", ("", "http", "https"))
    username, password = _login(fields)
    mirrors = tuple(_mirror(item) for item in fields.objects("mirrors", MIRROR_KEYS))
    proxy = _proxy(fields.object("proxy", (*PROXY_KEYS, "dragonfly_scheduler_endpoint")))
    if mirrors and proxy is not None:
        raise fields.error("proxy", "not allowed together with mirrors (Nydus's rule: use one or the other)")
    options = RegistryOptions(
        http=_http_options(fields),
        plain_http=None if not scheme else scheme == "http",
        username=username,
        password=password,
        registry_token=fields.str("registry_token", ""),
        mirrors=mirrors,
        proxy=proxy,
        bootstrap_size_limit=fields.int("bootstrap_size_limit", RegistryOptions().bootstrap_size_limit, 1),
    )
    return RegistryConfig(host, repo, options)


def _backend(fields: Fields) -> BackendConfig:
    backend_type = fields.str("type")
    if backend_type not in BACKEND_TYPES:
        raise fields.error("type", f"unknown backend {backend_type!r}")
    if backend_type == "localfs":
        return LocalFsConfig(fields.object("config", ("dir",)).str("dir"))
    if backend_type == "http":
        options = fields.object("config", ("url", *HTTP_KEYS))
        return HttpConfig(_url(options, "url"), _http_options(options))
    return _registry(fields.object("config", (*REGISTRY_KEYS, *HTTP_KEYS)))


def _cache(fields: Fields) -> CacheConfig:
    cache_type = fields.str("type", "", CACHE_TYPES)
    if fields.bool("compressed", False):
        raise fields.error("compressed", "only uncompressed caches are supported")
    options = fields.object("config", ("work_dir", "disable_indexed_map", "size_limit"))
    options.bool("disable_indexed_map", False)
    work_dir = options.str("work_dir", "")
    if cache_type == "blobcache" and not work_dir:
        raise options.error("work_dir", "missing (needed by blobcache)")
    return CacheConfig(cache_type, work_dir, options.int("size_limit", 0))


def _prefetch(fields: Fields) -> PrefetchConfig:
    return PrefetchConfig(
        enable=fields.bool("enable", True),
        threads_count=fields.int("threads_count", 8, 1),
        merging_size=fields.int("merging_size", 1 << 20, 1),
        bandwidth_rate=fields.int("bandwidth_rate", 0),
        prefetch_all=fields.bool("prefetch_all", False),
    )


def _readahead(fields: Fields) -> ReadaheadConfig:
    return ReadaheadConfig(
        whole_file_max=fields.int("whole_file_max", 256 << 20),
        window_max=fields.int("window_max", 32 << 20),
        adaptive_amplify=fields.bool("adaptive_amplify", True),
    )


TOP_KEYS = (
    "device",
    "mode",
    "fs_driver",
    "digest_validate",
    "iostats_files",
    "access_pattern",
    "latest_read_files",
    "enable_xattr",
    "amplify_io",
    "fs_prefetch",
    "readahead",
)


def parse_config(data: object) -> DaemonConfig:
    """A `DaemonConfig` from decoded JSON; `ConfigError` naming the first bad key.

    Every backend's options are read here, into records that import no backend: a bad key
    stops the start, and no client is built to find out.
    """
    top = Fields(data, "", TOP_KEYS)
    device = top.object("device", ("backend", "cache"))
    if not device.has("backend"):
        raise device.error("backend", "missing")
    backend = device.object("backend", ("type", "config"))
    return DaemonConfig(
        backend=_backend(backend),
        cache=_cache(device.object("cache", ("type", "compressed", "config"))),
        mode=top.str("mode", "direct", MODES),
        fs_driver=top.str("fs_driver", "fusedev", FS_DRIVERS),
        digest_validate=top.bool("digest_validate", False),
        iostats_files=top.bool("iostats_files", False),
        access_pattern=top.bool("access_pattern", False),
        latest_read_files=top.bool("latest_read_files", False),
        enable_xattr=top.bool("enable_xattr", True),
        amplify_io=top.int("amplify_io", 1 << 20),
        fs_prefetch=_prefetch(
            top.object("fs_prefetch", ("enable", "threads_count", "merging_size", "bandwidth_rate", "prefetch_all"))
        ),
        readahead=_readahead(top.object("readahead", ("whole_file_max", "window_max", "adaptive_amplify"))),
        backend_as_written=backend.value,
    )


def read_config_file(path: str) -> object:
    """The decoded JSON of a config file."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except OSError as error:
        raise ConfigError(f"config file {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file {path}: not JSON: {error}") from None


def load_config(path: str) -> DaemonConfig:
    """Read and check a config file."""
    return parse_config(read_config_file(path))


def image_config(data: object | None, image: ImageReference, *, plain_http: bool, work_dir: str) -> DaemonConfig:
    """The config for `nydusd --image`: a registry backend whose `host` and `repo` are the image's.

    `data` (a decoded config file, or None) may leave out the backend or its host and repo; its
    other registry options (auth, mirrors, timeouts) are kept. Without a blobcache, one in
    `work_dir` is added: the bootstrap is kept there too.
    """
    top = dict(Fields(data if data is not None else {}, "", TOP_KEYS).value)
    device = dict(Fields(top.get("device", {}), "device", ("backend", "cache")).value)
    backend = Fields(device.get("backend", {"type": "registry"}), "device.backend", ("type", "config"))
    if backend.str("type", "registry") != "registry":
        raise backend.error("type", f"--image needs 'registry', not {backend.value['type']!r}")
    options = dict(backend.object("config", (*REGISTRY_KEYS, *HTTP_KEYS)).value)
    options.update(host=image.registry, repo=image.repository)
    if plain_http:
        options["scheme"] = "http"
    device["backend"] = {"type": "registry", "config": options}
    cache = Fields(device.get("cache", {}), "device.cache", ("type", "compressed", "config"))
    if cache.value.get("type") != "blobcache":
        device["cache"] = {"type": "blobcache", "config": {"work_dir": work_dir}}
    top["device"] = device
    return parse_config(top)


def default_config(blob_dir: str) -> DaemonConfig:
    """The configuration used without `--config`: blobs beside the bootstrap, memory cache."""
    return DaemonConfig(backend=LocalFsConfig(blob_dir))
