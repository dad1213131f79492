"""nydusd's JSON configuration, read into frozen dataclasses.

The layout follows nydusd's (`device.backend`, `device.cache`, `mode`, `digest_validate`,
`fs_prefetch`, ...). Reading is strict: a key this daemon does not know, a value of the wrong
type or a missing required key is a `ConfigError` naming the key by its dotted path, because a
silently ignored typo in a deployment file costs more than a refused start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from rafs.errors import ConfigError
from rafs.oci import ImageReference

BACKEND_TYPES = ("localfs", "http", "registry")
CACHE_TYPES = ("blobcache", "")
MODES = ("direct", "cached")


@dataclass(frozen=True)
class LocalFsConfig:
    """`{"type": "localfs", "config": {"dir": ...}}`: blobs are files named by id in `dir`."""

    dir: str


@dataclass(frozen=True)
class BackendConfig:
    """`type` and its options: `localfs` for "localfs"; for "http" and "registry" the raw
    `config` object, already checked by that backend's `from_config` when the file was read."""

    type: str
    localfs: LocalFsConfig = field(default_factory=lambda: LocalFsConfig(""))
    options: Mapping[str, object] = field(default_factory=dict)


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
    never); `window_max`: the largest window of sequential readahead in a file (0 = none).
    """

    whole_file_max: int = 256 << 20
    window_max: int = 32 << 20


@dataclass(frozen=True)
class DaemonConfig:
    backend: BackendConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    mode: str = "direct"
    # Chunks are verified when they enter the cache; true re-hashes every cache hit as well.
    digest_validate: bool = False
    iostats_files: bool = False  # per-file counters (`/api/v1/metrics/files`)
    access_pattern: bool = False  # first access per inode (`/api/v1/metrics/pattern`)
    latest_read_files: bool = False  # files read since the last ask (`/api/v1/metrics/files?latest=true`)
    enable_xattr: bool = True
    amplify_io: int = 1 << 20  # blob-order amplification of a demand miss, stored bytes
    fs_prefetch: PrefetchConfig = field(default_factory=PrefetchConfig)
    readahead: ReadaheadConfig = field(default_factory=ReadaheadConfig)


JsonObject = dict[str, object]


def _object(value: object, where: str) -> JsonObject:
    if not isinstance(value, dict):
        raise ConfigError(f"config key {where or '(top level)'}: expected an object")
    return value


def _only(obj: JsonObject, where: str, allowed: tuple[str, ...]) -> None:
    for key in obj:
        if key not in allowed:
            raise ConfigError(f"config key {where}{key}: unknown key")


def _bool(obj: JsonObject, key: str, where: str, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"config key {where}{key}: expected true or false, got {value!r}")
    return value


def _int(obj: JsonObject, key: str, where: str, default: int, minimum: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"config key {where}{key}: expected an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"config key {where}{key}: must be at least {minimum}, got {value}")
    return value


def _str(obj: JsonObject, key: str, where: str, default: str | None, choices: tuple[str, ...] = ()) -> str:
    if key not in obj and default is None:
        raise ConfigError(f"config key {where}{key}: missing")
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"config key {where}{key}: expected a string, got {value!r}")
    if choices and value not in choices:
        raise ConfigError(f"config key {where}{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
    return value


def _backend(obj: JsonObject) -> BackendConfig:
    where = "device.backend."
    _only(obj, where, ("type", "config"))
    backend_type = _str(obj, "type", where, None)
    if backend_type not in BACKEND_TYPES:
        raise ConfigError(f"config key {where}type: unknown backend {backend_type!r}")
    options = _object(obj.get("config", {}), where + "config")
    if backend_type != "localfs":
        check_remote_backend(backend_type, options)
        return BackendConfig(backend_type, options=options)
    _only(options, where + "config.", ("dir",))
    return BackendConfig(backend_type, LocalFsConfig(_str(options, "dir", where + "config.", None)))


def _cache(obj: JsonObject) -> CacheConfig:
    where = "device.cache."
    _only(obj, where, ("type", "compressed", "config"))
    cache_type = _str(obj, "type", where, "", CACHE_TYPES)
    if _bool(obj, "compressed", where, False):
        raise ConfigError(f"config key {where}compressed: only uncompressed caches are supported")
    options = _object(obj.get("config", {}), where + "config")
    _only(options, where + "config.", ("work_dir", "disable_indexed_map", "size_limit"))
    _bool(options, "disable_indexed_map", where + "config.", False)
    work_dir = _str(options, "work_dir", where + "config.", "")
    if cache_type == "blobcache" and not work_dir:
        raise ConfigError(f"config key {where}config.work_dir: missing (needed by blobcache)")
    return CacheConfig(cache_type, work_dir, _int(options, "size_limit", where + "config.", 0, 0))


def _prefetch(obj: JsonObject) -> PrefetchConfig:
    where = "fs_prefetch."
    _only(obj, where, ("enable", "threads_count", "merging_size", "bandwidth_rate", "prefetch_all"))
    return PrefetchConfig(
        enable=_bool(obj, "enable", where, True),
        threads_count=_int(obj, "threads_count", where, 8, 1),
        merging_size=_int(obj, "merging_size", where, 1 << 20, 1),
        bandwidth_rate=_int(obj, "bandwidth_rate", where, 0, 0),
        prefetch_all=_bool(obj, "prefetch_all", where, False),
    )


def _readahead(obj: JsonObject) -> ReadaheadConfig:
    where = "readahead."
    _only(obj, where, ("whole_file_max", "window_max"))
    return ReadaheadConfig(
        whole_file_max=_int(obj, "whole_file_max", where, 256 << 20, 0),
        window_max=_int(obj, "window_max", where, 32 << 20, 0),
    )


def check_remote_backend(backend_type: str, options: Mapping[str, object]) -> None:
    """Have the backend read its options now, so a bad key stops the start, not the first read.

    Imported here, not at the top: a local mount never pays for importing `requests`.
    """
    from daemon.storage.http import HttpBackend
    from daemon.storage.registry import RegistryBackend

    factory = HttpBackend.from_config if backend_type == "http" else RegistryBackend.from_config
    factory(options).close()


def parse_config(data: object) -> DaemonConfig:
    """A `DaemonConfig` from decoded JSON; `ConfigError` naming the first bad key."""
    top = _object(data, "")
    _only(
        top,
        "",
        (
            "device",
            "mode",
            "digest_validate",
            "iostats_files",
            "access_pattern",
            "latest_read_files",
            "enable_xattr",
            "amplify_io",
            "fs_prefetch",
            "readahead",
        ),
    )
    device = _object(top.get("device"), "device") if "device" in top else {}
    _only(device, "device.", ("backend", "cache"))
    if "backend" not in device:
        raise ConfigError("config key device.backend: missing")
    return DaemonConfig(
        backend=_backend(_object(device["backend"], "device.backend")),
        cache=_cache(_object(device.get("cache", {}), "device.cache")),
        mode=_str(top, "mode", "", "direct", MODES),
        digest_validate=_bool(top, "digest_validate", "", False),
        iostats_files=_bool(top, "iostats_files", "", False),
        access_pattern=_bool(top, "access_pattern", "", False),
        latest_read_files=_bool(top, "latest_read_files", "", False),
        enable_xattr=_bool(top, "enable_xattr", "", True),
        amplify_io=_int(top, "amplify_io", "", 1 << 20, 0),
        fs_prefetch=_prefetch(_object(top.get("fs_prefetch", {}), "fs_prefetch")),
        readahead=_readahead(_object(top.get("readahead", {}), "readahead")),
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
    top = dict(_object(data, "")) if data is not None else {}
    device = dict(_object(top.get("device", {}), "device"))
    backend = dict(_object(device.get("backend", {"type": "registry"}), "device.backend"))
    if backend.get("type", "registry") != "registry":
        raise ConfigError(f"config key device.backend.type: --image needs 'registry', not {backend['type']!r}")
    options = dict(_object(backend.get("config", {}), "device.backend.config"))
    options.update(host=image.registry, repo=image.repository)
    if plain_http:
        options["scheme"] = "http"
    device["backend"] = {"type": "registry", "config": options}
    cache = _object(device.get("cache", {}), "device.cache")
    if cache.get("type") != "blobcache":
        device["cache"] = {"type": "blobcache", "config": {"work_dir": work_dir}}
    top["device"] = device
    return parse_config(top)


def default_config(blob_dir: str) -> DaemonConfig:
    """The configuration used without `--config`: blobs beside the bootstrap, memory cache."""
    return DaemonConfig(backend=BackendConfig("localfs", LocalFsConfig(blob_dir)))
