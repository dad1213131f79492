"""nydusd's JSON config: every known key read, unknown keys and wrong types named."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from daemon.config import default_config, image_config, load_config, parse_config
from daemon.storage.options import (
    HttpConfig,
    HttpOptions,
    LocalFsConfig,
    Mirror,
    Proxy,
    RegistryConfig,
    RegistryOptions,
)
from rafs.errors import ConfigError
from rafs.oci import ImageReference

FULL = {
    "device": {
        "backend": {"type": "localfs", "config": {"dir": "/blobs"}},
        "cache": {"type": "blobcache", "compressed": False, "config": {"work_dir": "/cache"}},
    },
    "mode": "direct",
    "digest_validate": True,
    "iostats_files": True,
    "enable_xattr": False,
    "amplify_io": 4096,
    "fs_prefetch": {"enable": False, "threads_count": 2, "merging_size": 65536, "bandwidth_rate": 10},
    "readahead": {"whole_file_max": 0, "window_max": 1 << 20, "adaptive_amplify": False},
}


def test_full_config_is_read() -> None:
    config = parse_config(FULL)
    assert config.backend == LocalFsConfig("/blobs")
    assert (config.cache.type, config.cache.work_dir) == ("blobcache", "/cache")
    assert config.digest_validate and not config.enable_xattr and config.iostats_files
    assert config.fs_prefetch.threads_count == 2 and config.fs_prefetch.merging_size == 65536
    assert not config.fs_prefetch.enable
    assert (config.readahead.whole_file_max, config.readahead.window_max) == (0, 1 << 20)
    assert config.readahead.adaptive_amplify is False


def test_defaults() -> None:
    config = parse_config({"device": {"backend": {"type": "localfs", "config": {"dir": "d"}}}})
    assert config == default_config("d")
    # Nydus's defaults where they apply: chunks verified when cached, not again on every hit;
    # the prefetch table fetched at mount; eight requests in flight.
    assert not config.digest_validate and config.cache.type == ""
    assert config.fs_prefetch.enable and not config.fs_prefetch.prefetch_all
    assert config.fs_prefetch.threads_count == 8 and config.amplify_io == 1 << 20
    assert config.readahead.whole_file_max == 256 << 20 and config.readahead.window_max == 32 << 20
    assert config.readahead.adaptive_amplify is True


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda c: c.update(digest_validat=True), "digest_validat"),
        (lambda c: c["device"].update(extra=1), "device.extra"),
        (lambda c: c["device"]["backend"]["config"].update(directory="x"), "device.backend.config.directory"),
        (lambda c: c["device"]["cache"]["config"].update(workdir="x"), "device.cache.config.workdir"),
        (lambda c: c["fs_prefetch"].update(threads=1), "fs_prefetch.threads"),
        (lambda c: c.update(digest_validate="yes"), "digest_validate"),
        (lambda c: c.update(amplify_io=True), "amplify_io"),
        (lambda c: c["fs_prefetch"].update(threads_count=0), "fs_prefetch.threads_count"),
        (lambda c: c["fs_prefetch"].update(merging_size="1M"), "fs_prefetch.merging_size"),
        (lambda c: c.update(mode="fast"), "mode"),
        (lambda c: c["readahead"].update(whole_file=1), "readahead.whole_file"),
        (lambda c: c["readahead"].update(window_max=-1), "readahead.window_max"),
        (lambda c: c["readahead"].update(adaptive_amplify="yes"), "readahead.adaptive_amplify"),
        (lambda c: c["device"]["backend"].update(type="s3"), "device.backend.type"),
        (lambda c: c["device"]["backend"].update(type="registry"), "device.backend.config.dir"),
        (lambda c: c["device"]["backend"].update(type="http"), "device.backend.config.dir"),
        (lambda c: c["device"]["backend"]["config"].pop("dir"), "device.backend.config.dir"),
        (lambda c: c["device"]["cache"]["config"].pop("work_dir"), "device.cache.config.work_dir"),
        (lambda c: c["device"].pop("backend"), "device.backend"),
        (lambda c: c["device"].update(cache=[]), "device.cache"),
    ],
)
def test_bad_key_is_named(change, key: str) -> None:  # type: ignore[no-untyped-def]
    config = json.loads(json.dumps(FULL))
    change(config)
    with pytest.raises(ConfigError, match=f"config key {key.replace('.', '[.]')}:"):
        parse_config(config)


def test_unreadable_files(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(os.path.join(tmp_path, "absent.json"))
    broken = os.path.join(tmp_path, "broken.json")
    with open(broken, "w") as file:
        file.write("{")
    with pytest.raises(ConfigError, match="not JSON"):
        load_config(broken)


def registry(**options: object) -> dict[str, object]:
    """A whole config whose backend is a registry with `options` besides host and repo."""
    return {"device": {"backend": {"type": "registry", "config": {"host": "h:5000", "repo": "r", **options}}}}


def test_remote_backends_are_read_into_records() -> None:
    http = parse_config({"device": {"backend": {"type": "http", "config": {"url": "http://h/blobs", "timeout": 3}}}})
    assert http.backend == HttpConfig("http://h/blobs", HttpOptions(timeout_s=3.0))
    config = parse_config(registry(scheme="http", retry_limit=1, auth=base64.b64encode(b"u:p").decode()))
    assert isinstance(config.backend, RegistryConfig)
    assert (config.backend.host, config.backend.repo) == ("h:5000", "r")
    options = config.backend.options
    assert options.plain_http is True and options.http.retry_limit == 1
    assert (options.username, options.password) == ("u", "p")
    assert options.mirrors == () and options.proxy is None


def test_reading_a_config_imports_no_backend() -> None:
    """A config is checked without `requests` or a client: nothing is built to validate it."""
    script = (
        "import sys; from daemon.config import parse_config; "
        f"parse_config({registry(mirrors=[{'host': 'm'}])!r}); "
        "print(sorted(m for m in sys.modules if m == 'requests' or m.startswith('daemon.storage.registry')))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_mirrors_carry_every_nydus_key() -> None:
    mirror = {
        "host": "http://127.0.0.1:65001/",
        "headers": {"X-Dragonfly-Registry": "https://h:5000"},
        "ping_url": "http://127.0.0.1:40901/server/ping",
        "health_check_interval": 2,
        "failure_limit": 3,
        "health_check_pause_elapsed": 60,
        "auth_through": False,
    }
    config = parse_config(registry(mirrors=[mirror, {"host": "mirror.example.com"}]))
    assert isinstance(config.backend, RegistryConfig)
    assert config.backend.options.mirrors == (
        Mirror(
            host="127.0.0.1:65001",
            plain_http=True,
            headers={"X-Dragonfly-Registry": "https://h:5000"},
            ping_url="http://127.0.0.1:40901/server/ping",
            health_check_interval_s=2.0,
            failure_limit=3,
            health_check_pause_elapsed_s=60.0,
        ),
        Mirror("mirror.example.com"),
    )


def test_proxy_carries_every_nydus_key() -> None:
    proxy = {
        "url": "http://127.0.0.1:65001",
        "ping_url": "http://127.0.0.1:40901/server/ping",
        "check_interval": 1,
        "check_pause_elapsed": 30,
        "fallback": False,
        "use_http": True,
    }
    config = parse_config(registry(proxy=proxy))
    assert isinstance(config.backend, RegistryConfig)
    assert config.backend.options.proxy == Proxy(
        "http://127.0.0.1:65001", "http://127.0.0.1:40901/server/ping", 1.0, 30.0, fallback=False, use_http=True
    )
    empty = parse_config(registry(proxy={"url": ""}))  # Nydus's way of saying "no proxy"
    assert isinstance(empty.backend, RegistryConfig) and empty.backend.options.proxy is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (registry(mirrors=[{"host": "m", "weight": 1}]), r"config key device\.backend\.config\.mirrors\[0\]\.weight:"),
        (registry(mirrors=[{"headers": {}}]), r"config key device\.backend\.config\.mirrors\[0\]\.host: missing"),
        (registry(mirrors=[{"host": "m", "failure_limit": 0}]), r"mirrors\[0\]\.failure_limit: must be at least 1"),
        (registry(mirrors={"host": "m"}), r"config key device\.backend\.config\.mirrors: expected a list"),
        (registry(timeout="soon"), r"config key device\.backend\.config\.timeout:"),
        (registry(auth="not base64!"), r"config key device\.backend\.config\.auth: not base64"),
        (registry(repo="Bad Repo"), r"config key device\.backend\.config\.repo:"),
        (registry(proxy={"url": "ftp://p"}), r"config key device\.backend\.config\.proxy\.url:"),
        (registry(proxy={"url": "http://p", "dragonfly_scheduler_endpoint": "http://s"}), r"proxy\.dragonfly_sch"),
        (
            registry(proxy={"url": "http://p"}, mirrors=[{"host": "m"}]),
            r"config key device\.backend\.config\.proxy: not allowed together with mirrors",
        ),
        (
            {"device": {"backend": {"type": "registry", "config": {"repo": "r"}}}},
            r"config key device\.backend\.config\.host: missing",
        ),
        (
            {"device": {"backend": {"type": "http", "config": {"url": "ftp://h"}}}},
            r"config key device\.backend\.config\.url:",
        ),
        (
            {"device": {"backend": {"type": "http", "config": {"url": "http://h", "proxy": {}}}}},
            r"config key device\.backend\.config\.proxy: unknown key",
        ),
    ],
)
def test_bad_remote_backend_key_is_named(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(config)


def test_image_config_takes_host_and_repo_from_the_reference() -> None:
    ref = ImageReference.parse("127.0.0.1:5000/library/app:1")
    config = image_config(None, ref, plain_http=True, work_dir="/cache")
    assert config.backend == RegistryConfig("127.0.0.1:5000", "library/app", RegistryOptions(plain_http=True))
    assert (config.cache.type, config.cache.work_dir) == ("blobcache", "/cache")
    given = {"device": {"backend": {"type": "registry", "config": {"retry_limit": 5}}}, "digest_validate": True}
    kept = image_config(given, ref, plain_http=False, work_dir="/cache")
    assert isinstance(kept.backend, RegistryConfig)
    assert kept.backend.options.http.retry_limit == 5 and kept.backend.options.plain_http is None
    assert kept.digest_validate
    with pytest.raises(ConfigError, match="--image needs 'registry'"):
        image_config({"device": {"backend": {"type": "localfs"}}}, ref, plain_http=False, work_dir="/c")


def test_cache_size_limit() -> None:
    cache = {"type": "blobcache", "config": {"work_dir": "/c", "size_limit": 1 << 30}}
    config = parse_config({"device": {"backend": {"type": "localfs", "config": {"dir": "d"}}, "cache": cache}})
    assert config.cache.size_limit == 1 << 30
    cache["config"]["size_limit"] = -1  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"config key device[.]cache[.]config[.]size_limit:"):
        parse_config({"device": {"backend": {"type": "localfs", "config": {"dir": "d"}}, "cache": cache}})
