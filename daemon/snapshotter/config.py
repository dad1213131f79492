"""`containerd-nydus-grpc`'s TOML config, read into one frozen record.

The keys are nydus-snapshotter's (`misc/snapshotter/config.toml`) for what this snapshotter
does; any other key is refused with its dotted name, because a key that is silently ignored in a
deployment file is worse than a refused start. Command-line flags override the file.
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from dataclasses import dataclass
from typing import Any

from daemon import unix_socket
from daemon.snapshotter.errors import SnapshotterConfigError

DAEMON_MODES = ("dedicated", "shared")
RECOVER_POLICIES = ("restart", "none")
LOG_LEVELS = ("trace", "debug", "info", "warn", "error")
DEFAULT_ROOT = "/var/lib/containerd-nydus"
DEFAULT_ADDRESS = "/run/containerd-nydus/containerd-nydus-grpc.sock"
LONGEST_DAEMON_SOCKET = "socket/nydusd-shared/api.sock"  # below the root (see layout.py)

# Accepted keys per table ("" is the top level); a value of None is a nested table.
KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "": ("version", "root", "address", "daemon_mode", "cleanup_on_close", "daemon", "log", "metrics", "cache_manager"),
    "daemon": (
        "nydusd_path", "nydusd_config", "daemon_mode", "fs_driver", "recover_policy", "threads_number",
        "failover_policy",
    ),
    "log": ("level", "log_to_stdout"),
    "metrics": ("address",),
    "cache_manager": ("disable", "cache_dir"),
}  # fmt: skip


@dataclass(frozen=True)
class SnapshotterConfig:
    """Everything the snapshotter needs to know; paths are absolute."""

    root: str = DEFAULT_ROOT
    address: str = DEFAULT_ADDRESS
    daemon_mode: str = "dedicated"
    nydusd_path: str = ""  # "" = the `nydusd` beside this Python, else on PATH
    nydusd_config: str = ""  # "" = a registry backend with a blobcache (nydus-snapshotter's template)
    recover_policy: str = "restart"  # a dead nydusd is started again when its image is next needed
    threads_number: int = 4
    failover_policy: str = "resend"
    log_level: str = "info"
    log_to_stdout: bool = True
    metrics_address: str = ""  # "host:port" of the Prometheus endpoint; "" = none
    cache_dir: str = ""  # "" = <root>/cache
    cache_gc: bool = True  # Cleanup removes chunk-cache blobs no live image uses
    cleanup_on_close: bool = False  # stop every nydusd when the snapshotter exits

    @property
    def cache_work_dir(self) -> str:
        return self.cache_dir or os.path.join(self.root, "cache")


def _check_keys(table: dict[str, Any], name: str) -> None:
    for key in table:
        if key not in KNOWN_KEYS[name]:
            dotted = f"{name}.{key}" if name else key
            raise SnapshotterConfigError(f"unknown key {dotted!r}")


def _typed(table: dict[str, Any], key: str, kind: type, default: Any, dotted: str) -> Any:
    value = table.get(key, default)
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise SnapshotterConfigError(f"{dotted}{key} must be of type {kind.__name__}, not {value!r}")
    return value


def _choice(value: str, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise SnapshotterConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def parse_config(text: str) -> dict[str, Any]:
    """The TOML document as a flat dict of `SnapshotterConfig` fields (only those it sets)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SnapshotterConfigError(f"not TOML: {error}") from None
    _check_keys(document, "")
    fields: dict[str, Any] = {}
    for key in ("root", "address", "daemon_mode"):
        if key in document:
            fields[key] = _typed(document, key, str, "", "")
    if "cleanup_on_close" in document:
        fields["cleanup_on_close"] = _typed(document, "cleanup_on_close", bool, False, "")
    tables = {}
    for name in ("daemon", "log", "metrics", "cache_manager"):
        table = document.get(name, {})
        if not isinstance(table, dict):
            raise SnapshotterConfigError(f"{name} must be a table")
        _check_keys(table, name)
        tables[name] = table
    daemon = tables["daemon"]
    for key in ("nydusd_path", "nydusd_config", "recover_policy", "failover_policy"):
        if key in daemon:
            fields[key] = _typed(daemon, key, str, "", "daemon.")
    if "daemon_mode" in daemon:
        mode = _typed(daemon, "daemon_mode", str, "", "daemon.")
        if "daemon_mode" in fields and fields["daemon_mode"] != mode:
            raise SnapshotterConfigError(
                f"daemon_mode {fields['daemon_mode']!r} and daemon.daemon_mode {mode!r} differ"
            )
        fields["daemon_mode"] = mode
    if "threads_number" in daemon:
        fields["threads_number"] = _typed(daemon, "threads_number", int, 4, "daemon.")
    if _typed(daemon, "fs_driver", str, "fusedev", "daemon.") != "fusedev":
        raise SnapshotterConfigError(f'daemon.fs_driver {daemon["fs_driver"]!r}: only "fusedev" is implemented')
    if "level" in tables["log"]:
        fields["log_level"] = _typed(tables["log"], "level", str, "info", "log.")
    if "log_to_stdout" in tables["log"]:
        fields["log_to_stdout"] = _typed(tables["log"], "log_to_stdout", bool, True, "log.")
    if "address" in tables["metrics"]:
        fields["metrics_address"] = _typed(tables["metrics"], "address", str, "", "metrics.")
    cache = tables["cache_manager"]
    if "cache_dir" in cache:
        fields["cache_dir"] = _typed(cache, "cache_dir", str, "", "cache_manager.")
    if "disable" in cache:
        fields["cache_gc"] = not _typed(cache, "disable", bool, False, "cache_manager.")
    return fields


def default_nydusd() -> str:
    """The `nydusd` installed beside this interpreter (the venv's), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "nydusd")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("nydusd") or "nydusd"


def load_config(path: str | None, overrides: dict[str, Any]) -> SnapshotterConfig:
    """The config file at `path` (if any) with `overrides` (flags that were given) applied, checked."""
    fields: dict[str, Any] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except OSError as error:
            raise SnapshotterConfigError(f"{path}: {error.strerror}") from None
        try:
            fields = parse_config(text)
        except SnapshotterConfigError as error:
            raise SnapshotterConfigError(f"{path}: {error.message}") from None
    fields.update({key: value for key, value in overrides.items() if value is not None})
    config = SnapshotterConfig(**fields)
    _choice(config.daemon_mode, DAEMON_MODES, "daemon_mode")
    _choice(config.log_level, LOG_LEVELS, "log.level")
    if config.recover_policy == "failover":
        raise SnapshotterConfigError('daemon.recover_policy "failover" needs FUSE session takeover, not implemented')
    _choice(config.recover_policy, RECOVER_POLICIES, "daemon.recover_policy")
    if config.threads_number < 1:
        raise SnapshotterConfigError("daemon.threads_number must be at least 1")
    for name, path in (("address", os.path.abspath(config.address)),
                       ("root", os.path.join(os.path.abspath(config.root), LONGEST_DAEMON_SOCKET))):  # fmt: skip
        if unix_socket.too_long(path):
            raise SnapshotterConfigError(
                f"{name} is too long for a unix socket: {path} is {len(os.fsencode(path))} bytes, at most "
                f"{unix_socket.MAX_PATH_BYTES} fit"
            )
    return SnapshotterConfig(
        **{
            **config.__dict__,
            "root": os.path.abspath(config.root),
            "address": os.path.abspath(config.address),
            "nydusd_path": config.nydusd_path or default_nydusd(),
            "nydusd_config": os.path.abspath(config.nydusd_config) if config.nydusd_config else "",
            "cache_dir": os.path.abspath(config.cache_dir) if config.cache_dir else "",
        }
    )
