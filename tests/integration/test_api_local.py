"""The API socket and the command line on a local image: the socket's life (mode, stale and live
sockets, removal), error answers, refused flags, `--version`, in-flight requests while a backend
stalls, and `--thread-num` bounding how many FUSE requests are answered at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.metrics import OPCODES, Fop
from tests.daemon.api_daemon import ApiDaemon, api_daemon, start_api_daemon
from tests.daemon.images import Image, build_image, synthetic_tree
from tests.daemon.nydusd import NYDUSD, REPO, force_unmount, is_mounted, requires_fuse, write_config

pytestmark = [pytest.mark.fuse, requires_fuse]

STALLING = [sys.executable, "-m", "tests.daemon.stalling_nydusd"]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    base = tmp_path_factory.mktemp("api-local")
    return build_image(synthetic_tree(str(base / "src"), files=12), str(base))


@pytest.fixture
def running(image: Image, tmp_path: Path) -> Iterator[ApiDaemon]:
    config = write_config(str(tmp_path / "c.json"), image.blob_dir, str(tmp_path / "cache"))
    arguments = ["--bootstrap", image.bootstrap, "--config", config, "--id", "daemon-7"]
    with api_daemon(arguments, str(tmp_path / "mnt"), str(tmp_path / "api.sock"), str(tmp_path / "log")) as daemon:
        yield daemon


def run_nydusd(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NYDUSD, *arguments], capture_output=True, text=True, cwd=REPO, timeout=60)


def test_info_names_the_daemon_and_errors_are_code_and_message(running: ApiDaemon) -> None:
    info = running.get("/api/v1/daemon")
    assert isinstance(info, dict)
    assert info["id"] == "daemon-7" and info["state"] == "RUNNING"
    assert list(info["backend_collection"]) == ["/"]
    for method, path, body, status, code in [
        ("GET", "/api/v1/nothing", None, 404, "NotFound"),
        ("DELETE", "/api/v1/daemon", None, 405, "MethodNotAllowed"),
        ("GET", "/api/v1/metrics?id=/nope", None, 404, "NoCounter"),
        ("POST", "/api/v1/mount?mountpoint=/x", {"source": "b", "config": ""}, 400, "NotSharedMode"),
        ("PUT", "/api/v1/daemon", ["not", "an", "object"], 400, "InvalidBody"),
        ("GET", "/api/v1/metrics/files", None, 400, "NotEnabled"),  # iostats_files is off
        ("PUT", "/api/v1/daemon/fuse/takeover", None, 501, "NotImplemented"),
    ]:
        answer = running.call(method, path, body)
        assert answer[0] == status, (method, path, answer)
        assert isinstance(answer[1], dict) and answer[1]["code"] == code and answer[1]["message"]


def test_a_raw_http_client_keeps_its_connection_and_gets_json(running: ApiDaemon) -> None:
    """Two requests on one connection (keep-alive, as Go's client does), then a malformed one."""
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(running.sock)
        client.settimeout(10)
        request = b"GET /api/v1/metrics/inflight HTTP/1.1\r\nHost: x\r\n\r\n"
        client.sendall(request + request)
        received = b""
        while received.count(b"HTTP/1.1 200 OK") < 2 or not received.endswith(b"[]"):
            chunk = client.recv(65536)
            assert chunk, received
            received += chunk
        client.sendall(b"NONSENSE\r\n\r\n")
        rest = b""
        while chunk := client.recv(65536):
            rest += chunk
        assert rest.startswith(b"HTTP/1.1 400 ") and b'"code": "BadRequest"' in rest


def test_socket_is_private_removed_on_sigterm_and_a_stale_one_is_replaced(image: Image, tmp_path: Path) -> None:
    sock = str(tmp_path / "api.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock)  # bound, never listening, closed: what a killed daemon leaves
    stale.close()
    config = write_config(str(tmp_path / "c.json"), image.blob_dir)
    mountpoint = str(tmp_path / "mnt")
    daemon = start_api_daemon(
        ["--bootstrap", image.bootstrap, "--config", config], mountpoint, sock, str(tmp_path / "l")
    )
    try:
        assert os.stat(sock).st_mode & 0o777 == 0o600
        # a second daemon on the same socket is refused, and the first keeps serving
        second = run_nydusd(
            "fuse", "--bootstrap", image.bootstrap, "--config", config, "--mountpoint", str(tmp_path / "m2"),
            "--apisock", sock,
        )  # fmt: skip
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [f"nydusd: --apisock {sock}: another daemon is serving on it"]
        assert isinstance(daemon.get("/api/v1/daemon"), dict)
        assert daemon.stop(signal.SIGTERM) == 0
        assert not os.path.exists(sock) and not is_mounted(mountpoint)
    finally:
        daemon.stop()
        force_unmount(mountpoint)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--supervisor", "/tmp/s.sock", "--id", "x"],
            "nydusd: --supervisor: takeover (hot upgrade, failover) is not implemented",
        ),
        (["--upgrade"], "nydusd: --upgrade: takeover (hot upgrade, failover) is not implemented"),
        ([], "nydusd: shared mode (no --bootstrap or --image) needs --apisock to receive mounts"),
    ],
    ids=["supervisor", "upgrade", "shared-without-socket"],
)
def test_what_is_not_done_is_refused_in_one_line(tmp_path: Path, arguments: list[str], message: str) -> None:
    done = run_nydusd("fuse", "--mountpoint", str(tmp_path), *arguments)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [message]
    assert not is_mounted(str(tmp_path))


def test_an_api_socket_path_too_long_for_unix_is_one_line_naming_it(image: Image, tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    sock = str(deep / "api.sock")
    config = write_config(str(tmp_path / "c.json"), image.blob_dir)
    done = run_nydusd(
        "fuse", "--bootstrap", image.bootstrap, "--config", config, "--mountpoint", str(tmp_path), "--apisock", sock
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"nydusd: --apisock {sock}: longer than the 107 bytes a unix socket path may have"
    ]
    assert not is_mounted(str(tmp_path))


def test_other_commands_are_refused_and_version_is_the_apis(running: ApiDaemon) -> None:
    singleton = run_nydusd("singleton", "--apisock", "/tmp/x")
    assert singleton.returncode == 2
    assert singleton.stderr.strip() == "nydusd: the singleton command is not implemented; use `nydusd fuse`"
    version = run_nydusd("--version")
    assert version.returncode == 0
    info = running.get("/api/v1/daemon")
    assert isinstance(info, dict)
    assert version.stdout.split()[:2] == ["nydusd", info["version"]["package_ver"]]
    assert run_nydusd("fuse", "--version").stdout == version.stdout


def _stalling_daemon(image: Image, tmp_path: Path, *extra: str) -> tuple[ApiDaemon, Path]:
    flag = tmp_path / "stall"
    config = write_config(str(tmp_path / "c.json"), image.blob_dir, amplify_io=0, fs_prefetch={"enable": False})
    arguments = ["--stall-flag", str(flag), "--bootstrap", image.bootstrap, "--config", config, *extra]
    daemon = start_api_daemon(
        arguments, str(tmp_path / "mnt"), str(tmp_path / "api.sock"), str(tmp_path / "log"), command=STALLING
    )
    return daemon, flag


def _read_in_thread(path: str, results: list[bytes | BaseException]) -> threading.Thread:
    def read() -> None:
        try:
            with open(path, "rb") as file:
                results.append(file.read())
        except BaseException as error:
            results.append(error)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _wait_for(predicate: object, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _reads_in_flight(daemon: ApiDaemon) -> list[dict[str, int]]:
    inflight = daemon.get("/api/v1/metrics/inflight")
    assert isinstance(inflight, list)
    return [entry for entry in inflight if entry["opcode"] == OPCODES[Fop.READ]]


def test_a_read_is_in_flight_while_the_backend_stalls_and_gone_after(image: Image, tmp_path: Path) -> None:
    daemon, flag = _stalling_daemon(image, tmp_path)
    try:
        target = os.path.join(daemon.mountpoint, "usr/lib/file001")
        ino = os.stat(target).st_ino
        flag.touch()
        results: list[bytes | BaseException] = []
        before = time.time()
        reader = _read_in_thread(target, results)
        _wait_for(lambda: _reads_in_flight(daemon), "the read to show in /metrics/inflight")
        (entry,) = _reads_in_flight(daemon)
        assert entry["inode"] == ino
        assert int(before) <= entry["timestamp_secs"] <= time.time()
        assert entry["unique"] > 0
        flag.unlink()
        reader.join(timeout=20)
        assert results == [Path(image.source, "usr/lib/file001").read_bytes()]
        assert daemon.get("/api/v1/metrics/inflight") == []
    finally:
        flag.unlink(missing_ok=True)
        daemon.stop()
        force_unmount(daemon.mountpoint)


def test_thread_num_bounds_the_requests_answered_at_once(image: Image, tmp_path: Path) -> None:
    daemon, flag = _stalling_daemon(image, tmp_path, "--thread-num", "2")
    threads: list[threading.Thread] = []
    try:
        sizes = {}
        for number in range(1, 12):
            name = f"usr/lib/file{number:03}"
            sizes[name] = os.stat(os.path.join(daemon.mountpoint, name)).st_size
        names = [name for name, size in sizes.items() if size > 0][:4]
        assert len(names) == 4
        flag.touch()
        results: list[bytes | BaseException] = []
        threads = [_read_in_thread(os.path.join(daemon.mountpoint, name), results) for name in names]
        _wait_for(lambda: len(_reads_in_flight(daemon)) >= 2, "two reads in flight")
        time.sleep(0.3)  # an observation window, not a handshake: a third request would show by now
        inflight = daemon.get("/api/v1/metrics/inflight")
        assert isinstance(inflight, list) and len(inflight) == 2, inflight
        flag.unlink()
        for thread in threads:
            thread.join(timeout=20)
        assert sorted(len(r) for r in results if isinstance(r, bytes)) == sorted(sizes[name] for name in names)
    finally:
        flag.unlink(missing_ok=True)
        daemon.stop()
        force_unmount(daemon.mountpoint)
