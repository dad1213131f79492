"""The TOML config: nydus-snapshotter's keys read, anything else refused in one line naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.snapshotter.config import load_config
from daemon.snapshotter.errors import SnapshotterConfigError
from tests.daemon.nydusd import REPO

NYDUS_STYLE = """
version = 1
root = "/var/lib/nydus-test"
address = "/run/nydus-test/grpc.sock"
[daemon]
nydusd_path = "/usr/local/bin/nydusd"
nydusd_config = "/etc/nydus/nydusd-config.fusedev.json"
fs_driver = "fusedev"
daemon_mode = "shared"
recover_policy = "restart"
threads_number = 2
[log]
level = "debug"
[metrics]
address = "127.0.0.1:9110"
[cache_manager]
disable = true
cache_dir = "/var/cache/nydus-test"
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_nydus_snapshotter_keys_are_read_and_flags_override_them(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, NYDUS_STYLE), {"root": str(tmp_path / "flag-root"), "log_level": None})
    assert config.root == str(tmp_path / "flag-root")  # the flag wins; a flag not given (None) does not
    assert config.log_level == "debug"
    assert (config.address, config.daemon_mode, config.threads_number) == ("/run/nydus-test/grpc.sock", "shared", 2)
    assert (config.nydusd_path, config.nydusd_config) == (
        "/usr/local/bin/nydusd",
        "/etc/nydus/nydusd-config.fusedev.json",
    )
    assert (config.metrics_address, config.cache_work_dir, config.cache_gc) == (
        "127.0.0.1:9110", "/var/cache/nydus-test", False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[daemon]\nnydusd_pth = 'x'\n", "unknown key 'daemon.nydusd_pth'"),
        ("rooot = '/x'\n", "unknown key 'rooot'"),
        ("[daemon]\nfs_driver = 'fscache'\n", 'only "fusedev" is implemented'),
        ("[daemon]\nrecover_policy = 'failover'\n", "needs FUSE session takeover"),
        ("daemon_mode = 'dedicated'\n[daemon]\ndaemon_mode = 'shared'\n", "differ"),
        ("[daemon]\nthreads_number = '4'\n", "daemon.threads_number must be of type int"),
        ("daemon_mode = 'multi'\n", "daemon_mode must be one of dedicated, shared"),
    ],
)
def test_bad_configs_are_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SnapshotterConfigError, match=message.replace("(", r"\(")):
        load_config(write(tmp_path, text), {})


def test_a_root_too_deep_for_the_daemons_unix_sockets_is_refused(tmp_path: Path) -> None:
    deep = "/tmp/" + "d" * 90
    with pytest.raises(SnapshotterConfigError, match="root is too long for a unix socket"):
        load_config(None, {"root": deep, "address": "/tmp/x.sock"})


def test_the_command_line_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[metrics]\naddress = ':9110'\ncollect_interval = '1m'\n")
    completed = subprocess.run(
        [sys.executable, "-m", "daemon.snapshotter.cli", "--config", path], capture_output=True, text=True, cwd=REPO
    )
    assert completed.returncode == 2
    assert completed.stderr == f"containerd-nydus-grpc: {path}: unknown key 'metrics.collect_interval'\n"
