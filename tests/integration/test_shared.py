"""Shared mode: one daemon, one FUSE mount, images mounted into subdirectories through the API.

Three images read concurrently, each equal to its `unpack`; one unmounted while the others are
being read; a remount; a mount whose backend is down failing alone; a cache directory shared by
all mounts; per-mount metrics; nydusctl driving every verb, including against a dead socket.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.api_daemon import ApiDaemon, api_daemon
from tests.daemon.images import Image, build_image, synthetic_tree, unpack
from tests.daemon.nydusd import REPO, requires_fuse
from tests.reference import Snapshot, diff, snapshot_directory
from tests.registry_fixture import free_port

pytestmark = [pytest.mark.fuse, requires_fuse]

NYDUSCTL = [sys.executable, "-m", "daemon.ctl"]
NAMES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Image, Snapshot]]:
    """Three different images, each with the snapshot of its `unpack` output."""
    base = tmp_path_factory.mktemp("shared-images")
    result = {}
    for seed, name in enumerate(NAMES):
        image = build_image(synthetic_tree(str(base / name / "src"), seed=seed + 20, files=15), str(base / name))
        result[name] = (image, snapshot_directory(unpack(image, str(base / name / "unpacked"))))
    return result


def file_bytes(image: Image) -> int:
    """Bytes of the image's regular files, each inode once (a hard link is read from the page cache)."""
    sizes = {}
    for directory, _, names in os.walk(image.source):
        for name in names:
            info = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(info.st_mode):
                sizes[info.st_ino] = info.st_size
    return sum(sizes.values())


def config_text(image: Image, work_dir: Path, **top: object) -> str:
    return json.dumps(
        {
            "device": {
                "backend": {"type": "localfs", "config": {"dir": image.blob_dir}},
                "cache": {"type": "blobcache", "config": {"work_dir": str(work_dir)}},
            },
            **top,
        }
    )


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[ApiDaemon]:
    """A shared-mode daemon: a mountpoint and an API socket, no image."""
    with api_daemon([], str(tmp_path / "mnt"), str(tmp_path / "api.sock"), str(tmp_path / "log")) as daemon:
        yield daemon


def mount(daemon: ApiDaemon, mountpoint: str, image: Image, config: str, method: str = "POST") -> tuple[int, object]:
    body = {"fs_type": "rafs", "source": image.bootstrap, "config": config}
    return daemon.call(method, f"/api/v1/mount?mountpoint={mountpoint}", body)


def snapshot_in_thread(path: str, results: dict[str, Snapshot | BaseException], key: str) -> threading.Thread:
    def run() -> None:
        try:
            results[key] = snapshot_directory(path)
        except BaseException as error:
            results[key] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_three_images_read_at_once_equal_their_unpack(
    shared: ApiDaemon, images: dict[str, tuple[Image, Snapshot]], tmp_path: Path
) -> None:
    assert os.listdir(shared.mountpoint) == []  # the empty root of shared mode
    cache = tmp_path / "cache"  # one cache directory for all three
    for name in NAMES:
        assert mount(shared, f"/{name}", images[name][0], config_text(images[name][0], cache)) == (204, None)
    assert sorted(os.listdir(shared.mountpoint)) == sorted(NAMES)
    results: dict[str, Snapshot | BaseException] = {}
    threads = [snapshot_in_thread(os.path.join(shared.mountpoint, name), results, name) for name in NAMES]
    for thread in threads:
        thread.join(timeout=120)
    for name in NAMES:
        actual = results[name]
        assert not isinstance(actual, BaseException), actual
        assert diff(images[name][1], actual) == []
    # inode numbers of different mounts never collide
    inodes = [os.stat(os.path.join(shared.mountpoint, name, "etc/passwd")).st_ino for name in NAMES]
    assert len(set(inodes)) == 3
    info = shared.get("/api/v1/daemon")
    assert isinstance(info, dict)
    assert sorted(info["backend_collection"]) == [f"/{name}" for name in sorted(NAMES)]
    # metrics per mount: each counted what was read from it, and only that
    for name in NAMES:
        metrics = shared.get(f"/api/v1/metrics?id=/{name}")
        assert isinstance(metrics, dict)
        assert metrics["id"] == f"/{name}" and metrics["data_read"] == file_bytes(images[name][0])
        cache_metrics = shared.get(f"/api/v1/metrics/blobcache?id=/{name}")
        assert isinstance(cache_metrics, dict) and cache_metrics["store_path"] == str(cache)
    status, error = shared.call("GET", "/api/v1/metrics")  # ambiguous without ?id=
    assert status == 404 and isinstance(error, dict) and "/alpha" in error["message"]
    # the same cache directory read again by a new mount of the same image is whole
    assert mount(shared, "/alpha-again", images["alpha"][0], config_text(images["alpha"][0], cache)) == (204, None)
    assert diff(images["alpha"][1], snapshot_directory(os.path.join(shared.mountpoint, "alpha-again"))) == []
    again = shared.get("/api/v1/metrics/backend?id=/alpha-again")
    assert isinstance(again, dict) and again["read_count"] == 0  # every chunk came from the shared cache


def test_an_image_without_xattrs_leaves_the_others_theirs(
    shared: ApiDaemon, images: dict[str, tuple[Image, Snapshot]], tmp_path: Path
) -> None:
    """A dedicated mount of an image without xattrs answers getxattr with ENOSYS (the kernel then
    stops asking); in shared mode that would switch xattrs off for every image of the connection."""
    source = tmp_path / "plain-src"
    (source / "etc").mkdir(parents=True)
    (source / "etc/plain").write_text("plain")
    plain = build_image(str(source), str(tmp_path / "plain"))
    with_xattrs = images["alpha"][0]
    assert mount(shared, "/plain", plain, config_text(plain, tmp_path / "cache")) == (204, None)
    assert mount(shared, "/alpha", with_xattrs, config_text(with_xattrs, tmp_path / "cache")) == (204, None)
    with pytest.raises(OSError) as raised:
        os.getxattr(os.path.join(shared.mountpoint, "plain/etc/plain"), "user.comment")
    assert raised.value.errno == errno.ENODATA
    assert os.getxattr(os.path.join(shared.mountpoint, "alpha/usr/lib/file004"), "user.comment") == b"hello"


def test_unmount_while_the_others_are_read_and_remount(
    shared: ApiDaemon, images: dict[str, tuple[Image, Snapshot]], tmp_path: Path
) -> None:
    for name in NAMES:
        assert mount(shared, f"/{name}", images[name][0], config_text(images[name][0], tmp_path / name)) == (204, None)
    stop = threading.Event()
    rounds: dict[str, int] = {"beta": 0, "gamma": 0}
    failures: list[str] = []

    def keep_reading(name: str) -> None:
        while not stop.is_set() or rounds[name] < 2:
            problems = diff(images[name][1], snapshot_directory(os.path.join(shared.mountpoint, name)))
            if problems:
                failures.append(f"{name}: {problems[:3]}")
                return
            rounds[name] += 1

    readers = [threading.Thread(target=keep_reading, args=(name,), daemon=True) for name in ("beta", "gamma")]
    for reader in readers:
        reader.start()
    assert shared.call("DELETE", "/api/v1/mount?mountpoint=/alpha") == (204, None)
    stop.set()
    for reader in readers:
        reader.join(timeout=120)
    assert failures == [] and min(rounds.values()) >= 2
    assert not os.path.exists(os.path.join(shared.mountpoint, "alpha"))
    assert sorted(os.listdir(shared.mountpoint)) == ["beta", "gamma"]
    status, error = shared.call("DELETE", "/api/v1/mount?mountpoint=/alpha")
    assert status == 404 and isinstance(error, dict) and error["code"] == "NotMounted"
    # a remount puts another image at the same place
    gamma = images["gamma"][0]
    assert mount(shared, "/beta", gamma, config_text(gamma, tmp_path / "gamma"), method="PUT") == (204, None)
    assert diff(images["gamma"][1], snapshot_directory(os.path.join(shared.mountpoint, "beta"))) == []
    status, error = mount(shared, "/beta", gamma, config_text(gamma, tmp_path / "gamma"))
    assert status == 409 and isinstance(error, dict) and error["code"] == "AlreadyMounted"


def test_a_mount_whose_backend_is_down_fails_alone(
    shared: ApiDaemon, images: dict[str, tuple[Image, Snapshot]], tmp_path: Path
) -> None:
    alpha = images["alpha"][0]
    assert mount(shared, "/alpha", alpha, config_text(alpha, tmp_path / "cache")) == (204, None)
    dead = json.dumps(
        {
            "device": {
                "backend": {
                    "type": "registry",
                    "config": {
                        "host": f"127.0.0.1:{free_port()}",
                        "repo": "library/gone",
                        "scheme": "http",
                        "retry_limit": 0,
                        "connect_timeout": 1,
                    },
                },
                "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path / "cache")}},
            }
        }
    )
    status, error = mount(shared, "/down", images["beta"][0], dead)
    assert status == 500 and isinstance(error, dict)
    assert error["code"] == "MountFailed" and error["message"].startswith("mount /down: ")
    assert "127.0.0.1" in error["message"]
    assert sorted(os.listdir(shared.mountpoint)) == ["alpha"]
    assert diff(images["alpha"][1], snapshot_directory(os.path.join(shared.mountpoint, "alpha"))) == []
    # bad requests: each answered, none disturbing the mount that works
    for path, body, code, words in [
        ("/a/b", {"source": alpha.bootstrap, "config": config_text(alpha, tmp_path)}, "InvalidMountpoint", "/name"),
        ("/bad", {"source": alpha.bootstrap, "config": config_text(alpha, tmp_path, typo=1)}, "InvalidConfig", "typo"),
        ("/bad", {"source": str(tmp_path / "missing.boot"), "config": config_text(alpha, tmp_path)}, "MountFailed",
         "missing.boot"),
        ("/bad", {"source": alpha.bootstrap, "config": "{"}, "InvalidConfig", "not JSON"),
    ]:  # fmt: skip
        status, error = shared.call("POST", f"/api/v1/mount?mountpoint={path}", body)
        assert isinstance(error, dict) and error["code"] == code and words in error["message"], (path, error)
    assert sorted(os.listdir(shared.mountpoint)) == ["alpha"]
    assert diff(images["alpha"][1], snapshot_directory(os.path.join(shared.mountpoint, "alpha"))) == []


def nydusctl(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NYDUSCTL, *arguments], capture_output=True, text=True, cwd=REPO, timeout=60)


def test_nydusctl_every_verb(shared: ApiDaemon, images: dict[str, tuple[Image, Snapshot]], tmp_path: Path) -> None:
    image = images["beta"][0]
    config = tmp_path / "beta.json"
    config.write_text(config_text(image, tmp_path / "cache"))
    sock = shared.sock
    done = nydusctl("--sock", sock, "mount", "-s", image.bootstrap, "-c", str(config), "-m", "/beta", "-t", "rafs")
    assert done.returncode == 0, done.stderr
    assert diff(images["beta"][1], snapshot_directory(os.path.join(shared.mountpoint, "beta"))) == []
    info = nydusctl("--sock", sock, "info")
    assert info.returncode == 0 and "RUNNING" in info.stdout and "/beta" in info.stdout
    raw = json.loads(nydusctl("--sock", sock, "--raw", "info").stdout)
    assert raw["state"] == "RUNNING" and list(raw["backend_collection"]) == ["/beta"]
    fsstats = json.loads(nydusctl("--sock", sock, "--raw", "metrics", "fsstats", "--id", "/beta").stdout)
    assert fsstats["data_read"] == file_bytes(image)
    table = nydusctl("--sock", sock, "metrics", "fsstats")
    assert table.returncode == 0 and f"data_read  {fsstats['data_read']}" in table.stdout
    backend = nydusctl("--sock", sock, "metrics", "backend")
    assert backend.returncode == 0 and "backend_type" in backend.stdout and "localfs" in backend.stdout
    cache = json.loads(nydusctl("--sock", sock, "--raw", "metrics", "cache").stdout)
    assert cache["underlying_files"] and all(os.path.isfile(path) for path in cache["underlying_files"])
    assert "underlying file" in nydusctl("--sock", sock, "metrics", "cache").stdout
    # -I repeats until stopped
    repeating = subprocess.Popen(
        [*NYDUSCTL, "--sock", sock, "--raw", "metrics", "backend", "-I", "0.1"], stdout=subprocess.PIPE, cwd=REPO
    )
    try:
        assert repeating.stdout is not None
        lines = [json.loads(repeating.stdout.readline()) for _ in range(3)]
        assert all(line["backend_type"] == "localfs" for line in lines)
    finally:
        repeating.kill()
        repeating.wait()
        if repeating.stdout is not None:
            repeating.stdout.close()
    level = nydusctl("--sock", sock, "set", "log-level", "debug")
    assert level.returncode == 0
    bad_level = nydusctl("--sock", sock, "set", "log-level", "loud")
    assert bad_level.returncode == 1 and "loud" in bad_level.stderr
    done = nydusctl("--sock", sock, "umount", "-m", "/beta")
    assert done.returncode == 0 and os.listdir(shared.mountpoint) == []
    again = nydusctl("--sock", sock, "umount", "-m", "/beta")
    assert again.returncode == 1 and again.stderr.strip().splitlines() == [
        "nydusctl: NotMounted: nothing is mounted at /beta"
    ]
    # a dead socket (bound, nobody listening) and a missing one: one line, exit 2
    dead = str(tmp_path / "dead.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(dead)
    stale.close()
    for path in (dead, str(tmp_path / "missing.sock")):
        result = nydusctl("--sock", path, "info")
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert result.stderr.startswith(f"nydusctl: cannot reach nydusd at {path}: ")
    # the cache verb is still there, and needs no daemon
    listing = nydusctl("cache", "--work-dir", str(tmp_path / "cache"), "--json")
    assert listing.returncode == 0 and json.loads(listing.stdout)["total_chunks"] >= 1
