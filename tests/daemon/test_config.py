"""nydusd's JSON config: every known key read, unknown keys and wrong types named."""

from __future__ import annotations

import json
import os

import pytest

from daemon.config import default_config, image_config, load_config, parse_config
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
    "readahead": {"whole_file_max": 0, "window_max": 1 << 20},
}


def test_full_config_is_read() -> None:
    config = parse_config(FULL)
    assert config.backend.localfs.dir == "/blobs"
    assert (config.cache.type, config.cache.work_dir) == ("blobcache", "/cache")
    assert config.digest_validate and not config.enable_xattr and config.iostats_files
    assert config.fs_prefetch.threads_count == 2 and config.fs_prefetch.merging_size == 65536
    assert not config.fs_prefetch.enable
    assert (config.readahead.whole_file_max, config.readahead.window_max) == (0, 1 << 20)


def test_defaults() -> None:
    config = parse_config({"device": {"backend": {"type": "localfs", "config": {"dir": "d"}}}})
    assert config == default_config("d")
    # Nydus's defaults where they apply: chunks verified when cached, not again on every hit;
    # the prefetch table fetched at mount; eight requests in flight.
    assert not config.digest_validate and config.cache.type == ""
    assert config.fs_prefetch.enable and not config.fs_prefetch.prefetch_all
    assert config.fs_prefetch.threads_count == 8 and config.amplify_io == 1 << 20
    assert config.readahead.whole_file_max == 256 << 20 and config.readahead.window_max == 32 << 20


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


def test_remote_backends_are_checked_when_read() -> None:
    http = parse_config({"device": {"backend": {"type": "http", "config": {"url": "http://h/blobs", "timeout": 3}}}})
    assert http.backend.type == "http" and http.backend.options["url"] == "http://h/blobs"
    registry = {"type": "registry", "config": {"host": "h:5000", "repo": "r", "scheme": "http", "retry_limit": 1}}
    assert parse_config({"device": {"backend": registry}}).backend.options["repo"] == "r"
    with pytest.raises(ConfigError, match=r"config key device[.]backend[.]config[.]host:"):
        parse_config({"device": {"backend": {"type": "registry", "config": {"repo": "r"}}}})
    with pytest.raises(ConfigError, match=r"config key device[.]backend[.]config[.]url:"):
        parse_config({"device": {"backend": {"type": "http", "config": {"url": "ftp://h"}}}})


def test_image_config_takes_host_and_repo_from_the_reference() -> None:
    ref = ImageReference.parse("127.0.0.1:5000/library/app:1")
    config = image_config(None, ref, plain_http=True, work_dir="/cache")
    assert config.backend.type == "registry"
    assert dict(config.backend.options) == {"host": "127.0.0.1:5000", "repo": "library/app", "scheme": "http"}
    assert (config.cache.type, config.cache.work_dir) == ("blobcache", "/cache")
    given = {"device": {"backend": {"type": "registry", "config": {"retry_limit": 5}}}, "digest_validate": True}
    kept = image_config(given, ref, plain_http=False, work_dir="/cache")
    assert kept.backend.options["retry_limit"] == 5 and "scheme" not in kept.backend.options
    with pytest.raises(ConfigError, match="--image needs 'registry'"):
        image_config({"device": {"backend": {"type": "localfs"}}}, ref, plain_http=False, work_dir="/c")


def test_cache_size_limit() -> None:
    cache = {"type": "blobcache", "config": {"work_dir": "/c", "size_limit": 1 << 30}}
    config = parse_config({"device": {"backend": {"type": "localfs", "config": {"dir": "d"}}, "cache": cache}})
    assert config.cache.size_limit == 1 << 30
    cache["config"]["size_limit"] = -1  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"config key device[.]cache[.]config[.]size_limit:"):
        parse_config({"device": {"backend": {"type": "localfs", "config": {"dir": "d"}}, "cache": cache}})
