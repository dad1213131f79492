"""What each backend is told: frozen records, no behaviour and no I/O.

`daemon.config` reads nydusd's JSON into these records; the backends (`localfs`, `http`,
`registry`) and the registry client take them as they are. Keeping them apart from the backends
lets a config be read and checked without importing `requests` or building a client, and lets
`nydusify` describe a registry with the same records the daemon uses.

`Mirror` and `Proxy` hold every key of Nydus's `mirrors[]` entries and `proxy` block; health
checks, failure counting and fallback are the registry client's to implement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from rafs.oci import Platform

# Bytes per second a transfer must keep up after its first byte: a 1 MiB chunk may take 16 s,
# four hundred times what it takes on a 200 Mbit/s link; a trickle of one byte per second fails.
DEFAULT_MIN_TRANSFER_RATE = 64 << 10
# Above the largest bootstrap the project builds (1,000,000 files: about 200 MiB).
DEFAULT_BOOTSTRAP_SIZE_LIMIT = 512 << 20


@dataclass(frozen=True)
class HttpOptions:
    """Timeouts and retries: nydusd's `timeout`, `connect_timeout`, `retry_limit`, `skip_verify`."""

    timeout_s: float = 30.0  # the first byte of an answer, and any pause in a body
    connect_timeout_s: float = 5.0
    min_rate_bytes_per_s: float = DEFAULT_MIN_TRANSFER_RATE  # after the first byte; 0: no floor
    retry_limit: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    skip_verify: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    pool_size: int = 16


@dataclass(frozen=True)
class Mirror:
    """A registry mirror tried before the origin for reads (a Nydus `mirrors[]` entry).

    `host` is `host[:port]`; `plain_http` None means the loopback rule decides. `ping_url` empty
    means `<mirror>/v2`; after `failure_limit` failures a mirror is skipped until its ping
    answers, pinged every `health_check_interval_s` while requests come, and not at all after
    `health_check_pause_elapsed_s` without one. `auth_through` is deprecated in Nydus and kept
    only so that old configs load.
    """

    host: str
    plain_http: bool | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    ping_url: str = ""
    health_check_interval_s: float = 5.0
    failure_limit: int = 5
    health_check_pause_elapsed_s: float = 300.0
    auth_through: bool = False


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy for blob reads, such as Dragonfly's dfdaemon (Nydus's `proxy` block).

    `ping_url` (empty: no health check) is polled every `check_interval_s`, not after
    `check_pause_elapsed_s` without requests; `fallback` goes to the origin when the proxy is
    unhealthy or fails; `use_http` sends `https` URLs through the proxy as `http`.
    """

    url: str
    ping_url: str = ""
    check_interval_s: float = 5.0
    check_pause_elapsed_s: float = 300.0
    fallback: bool = True
    use_http: bool = False


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
    proxy: Proxy | None = None  # never together with mirrors
    # How long a range read waits for a mirror to cache a blob it found cold (a pull-through
    # registry's first answer is the whole blob), and how often it asks; not Nydus config keys.
    mirror_cold_wait_s: float = 60.0
    mirror_probe_interval_s: float = 0.5
    platforms: tuple[Platform, ...] = ()  # empty: the host's, then linux/amd64
    upload_chunk_size: int = 0  # 0: monolithic uploads; else PATCH chunks of this size
    bootstrap_size_limit: int = DEFAULT_BOOTSTRAP_SIZE_LIMIT  # `nydusd --image`: the largest bootstrap accepted


@dataclass(frozen=True)
class LocalFsConfig:
    """`{"type": "localfs", "config": {"dir": ...}}`: blobs are files named by id in `dir`."""

    dir: str


@dataclass(frozen=True)
class HttpConfig:
    """`{"type": "http", "config": {"url": ..., ...}}`: blobs at `{url}/{blob_id}`."""

    url: str
    http: HttpOptions = field(default_factory=HttpOptions)


@dataclass(frozen=True)
class RegistryConfig:
    """`{"type": "registry", "config": {"host": ..., "repo": ..., ...}}`: blob X is layer sha256:X."""

    host: str  # host[:port]
    repo: str
    options: RegistryOptions = field(default_factory=RegistryOptions)


BackendConfig = LocalFsConfig | HttpConfig | RegistryConfig
