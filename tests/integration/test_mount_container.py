"""Containers on a nydusd mount: runc on an overlay of the read-only image and an upper dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.daemon.images import Image, build_image, debian_root
from tests.daemon.nydusd import REPO, is_mounted, requires_fuse, write_config

pytestmark = [
    pytest.mark.fuse,
    requires_fuse,
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc"),
]

RUN_CONTAINER = [sys.executable, os.path.join(REPO, "scripts", "run_container.py")]


@pytest.fixture(scope="module")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    base = str(tmp_path_factory.mktemp("busybox"))
    return build_image(debian_root(os.path.join(base, "src")), base)


def run_container(image: Image, work: str, *command: str, user: str = "0:0") -> subprocess.CompletedProcess[str]:
    os.makedirs(work, exist_ok=True)
    config = write_config(os.path.join(work, "c.json"), image.blob_dir, os.path.join(work, "cache"))
    completed = subprocess.run(
        [
            *RUN_CONTAINER,
            "--bootstrap",
            image.bootstrap,
            "--config",
            config,
            "--workdir",
            work,
            "--user",
            user,
            "--",
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert not is_mounted(os.path.join(work, "lower")), "the image stayed mounted"
    assert not os.path.ismount(os.path.join(work, "bundle", "rootfs")), "the overlay stayed mounted"
    return completed


def test_container_runs_on_the_mount(busybox_image: Image, tmp_path: os.PathLike[str]) -> None:
    applets = len(os.listdir(os.path.join(busybox_image.source, "usr/bin")))
    completed = run_container(
        busybox_image,
        str(tmp_path),
        "/bin/sh",
        "-c",
        "cat /etc/os-release; ls /usr/bin | wc -l; echo written > /etc/motd; cat /etc/motd; id -u",
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert "ID=debian" in lines
    assert lines[-3:] == [str(applets), "written", "0"]
    assert not os.path.exists(os.path.join(busybox_image.source, "etc/motd"))


def test_non_root_container_process_is_refused_a_root_only_file(
    busybox_image: Image, tmp_path: os.PathLike[str]
) -> None:
    completed = run_container(
        busybox_image,
        str(tmp_path),
        "/bin/sh",
        "-c",
        "id -u; cat /etc/passwd >/dev/null && echo readable; cat /root/secret",
        user="1000:1000",
    )
    assert completed.returncode != 0
    assert completed.stdout.splitlines() == ["1000", "readable"]
    assert "Permission denied" in completed.stderr
    as_root = run_container(busybox_image, os.path.join(str(tmp_path), "root"), "cat", "/root/secret")
    assert as_root.returncode == 0 and as_root.stdout == "root only\n"
