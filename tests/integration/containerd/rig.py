"""A containerd of the test's own, the snapshotter, and the example image in a loopback registry.

Everything lives under one temporary directory: containerd's root, state, gRPC, ttrpc and debug
sockets, its opt and plugin directories; the snapshotter's root and socket; ctr's fifo dir and
runc's root. The host's containerd (if any) is never touched. `stop()` of each part ends what it
started by pid, kills leftover shims and nydusd processes that name our directory, and detaches
every mount below it, also after a failed test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daemon.storage.registry import RegistryClient, RegistryOptions
from rafs.oci import ImageReference
from tests.registry_fixture import RunningRegistry

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
CTR_REMOTE = "/usr/bin/ctr-remote"
SNAPSHOTTER_NAME = "nydus"
REPO = Path(__file__).resolve().parents[3]

requires_containerd = pytest.mark.skipif(
    os.geteuid() != 0 or not all(os.path.exists(p) for p in (CONTAINERD, CTR, CTR_REMOTE, "/dev/fuse")),
    reason="needs root, /dev/fuse, containerd and ctr-remote (apt-get install containerd stargz-snapshotter)",
)


@dataclass(frozen=True)
class Example:
    """The example image (examples/make_example.py) in a loopback registry, twice."""

    registry: RunningRegistry
    oci: str  # host/example:oci, a plain OCI image
    nydus: str  # host/example:nydus, converted by nydusify
    layout: Path


def processes_naming(text: str) -> list[int]:
    """Pids whose command line contains `text` (our unique temp dir), this process excepted."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as cmdline:
                if text.encode() in cmdline.read():
                    found.append(int(name))
        except OSError:
            continue
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}/cmdline") and _alive(pid) for pid in pids):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def mounts_below(directory: str) -> list[str]:
    """Mountpoints at or below `directory`, deepest first."""
    prefix = os.path.realpath(directory)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(set(found), key=len, reverse=True)


def unmount_below(directory: str) -> None:
    for _ in range(4):
        points = mounts_below(directory)
        if not points:
            return
        for point in points:
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def wait_for_socket(path: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args!r} exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        if os.path.exists(path):
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(path)
                    return
                except OSError:
                    pass
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear:\n{log_path.read_text()[-3000:]}")


def stop_process(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@dataclass
class Snapshotter:
    """`containerd-nydus-grpc` under `root`, serving on `address`."""

    root: Path
    address: str
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "daemon.snapshotter.cli", "--config", str(self.config_path)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        wait_for_socket(self.address, self.process, self.log_path)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.process, sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def daemons(self) -> list[tuple[str, int, str]]:
        """(daemon id, pid, mountpoint) of the daemons its database records."""
        database = self.root / "metadata.db"
        if not database.exists():
            return []
        with sqlite3.connect(database) as db:
            return list(db.execute("SELECT daemon_id, pid, mountpoint FROM daemons ORDER BY daemon_id"))


@dataclass
class Containerd:
    """containerd 1.6 with its own root, state and sockets, the snapshotter as a proxy plugin."""

    base: Path
    snapshotter_address: str
    cri: dict[str, object] | None = None  # None: the CRI plugin is disabled
    process: subprocess.Popen[bytes] | None = None
    address: str = field(init=False)

    def __post_init__(self) -> None:
        self.address = str(self.base / "containerd.sock")
        self.log_path = self.base / "containerd.log"

    def config(self) -> str:
        b = self.base
        lines = [
            "version = 2",
            f'root = "{b}/root"',
            f'state = "{b}/state"',
            f'plugin_dir = "{b}/plugins"',
            f'[grpc]\n  address = "{self.address}"',
            f'[ttrpc]\n  address = "{self.address}.ttrpc"',
            f'[debug]\n  address = "{b}/debug.sock"',
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{b}/opt"',
            f'[proxy_plugins.{SNAPSHOTTER_NAME}]\n  type = "snapshot"\n  address = "{self.snapshotter_address}"',
        ]
        if self.cri is None:
            lines.insert(1, 'disabled_plugins = ["io.containerd.grpc.v1.cri"]')
        else:
            lines.append(cri_config(b, self.cri))
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "config.toml"
        config.write_text(self.config())
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [CONTAINERD, "--config", str(config), "--log-level", "info"], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for_socket(self.address, self.process, self.log_path)

    def ctr(self, *arguments: str, namespace: str = "default", check: bool = True, timeout_s: float = 120,
            binary: str = CTR) -> subprocess.CompletedProcess[str]:  # fmt: skip
        command = [binary, "-a", self.address, "-n", namespace, *arguments]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        if check and completed.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} failed ({completed.returncode}):\n{completed.stdout}{completed.stderr}"
            )
        return completed

    def run(self, image: str, name: str, *command: str, namespace: str = "default",
            check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """`ctr run --rm --snapshotter nydus IMAGE NAME COMMAND...`, its output captured."""
        return self.ctr(
            "run", "--rm", "--snapshotter", SNAPSHOTTER_NAME, "--fifo-dir", str(self.base / "fifo"),
            "--runc-root", str(self.base / "runc"), image, name, *command, namespace=namespace, check=check,
        )  # fmt: skip

    def start_detached(self, image: str, name: str, *command: str) -> None:
        """`ctr run -d`: a container left running (no stdio), stopped by `kill_task` or `stop()`."""
        self.ctr(
            "run", "-d", "--null-io", "--snapshotter", SNAPSHOTTER_NAME, "--runc-root", str(self.base / "runc"),
            image, name, *command,
        )  # fmt: skip

    def exec(self, name: str, exec_id: str, *command: str) -> subprocess.CompletedProcess[str]:
        """`ctr tasks exec` in a running container, its output captured."""
        return self.ctr("tasks", "exec", "--fifo-dir", str(self.base / "fifo"), "--exec-id", exec_id, name, *command)

    def kill_task(self, name: str) -> None:
        self.ctr("tasks", "kill", "-s", "KILL", name, check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.ctr("tasks", "delete", name, check=False).returncode == 0:
                break
            time.sleep(0.1)
        self.ctr("containers", "rm", name)

    def content_digests(self, namespace: str = "default") -> set[str]:
        """Digests in containerd's content store."""
        listing = self.ctr("content", "ls", "-q", namespace=namespace).stdout
        return {line.strip() for line in listing.splitlines() if line.strip()}

    def snapshot_names(self, namespace: str = "default") -> list[str]:
        listing = self.ctr("snapshots", "--snapshotter", SNAPSHOTTER_NAME, "ls", namespace=namespace).stdout
        return [line.split()[0] for line in listing.splitlines()[1:] if line.strip()]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            for namespace in ("default", "k8s.io"):
                tasks = self.ctr("tasks", "ls", "-q", namespace=namespace, check=False, timeout_s=30).stdout.split()
                for task in tasks:
                    self.ctr("tasks", "kill", "-s", "KILL", task, namespace=namespace, check=False, timeout_s=30)
        stop_process(self.process)
        kill_all(processes_naming(self.address))  # shims started for our containers


def cri_config(base: Path, cri: dict[str, object]) -> str:
    """The CRI plugin's section: our snapshotter, remote-snapshot labels on, a plain-HTTP mirror."""
    registry = cri["registry"]
    return "\n".join([
        '[plugins."io.containerd.grpc.v1.cri"]',
        f'  sandbox_image = "{registry}/pause:none"',
        '[plugins."io.containerd.grpc.v1.cri".containerd]',
        f'  snapshotter = "{SNAPSHOTTER_NAME}"',
        "  disable_snapshot_annotations = false",
        '[plugins."io.containerd.grpc.v1.cri".cni]',
        f'  bin_dir = "{base}/cni/bin"',
        f'  conf_dir = "{base}/cni/conf"',
        f'[plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]',
        f'  endpoint = ["http://{registry}"]',
    ])  # fmt: skip


def snapshotter_config(root: Path, address: str, *, daemon_mode: str = "dedicated", metrics: str = "") -> str:
    lines = [
        f'root = "{root}"',
        f'address = "{address}"',
        "[daemon]",
        f'nydusd_path = "{REPO}/.venv/bin/nydusd"' if (REPO / ".venv/bin/nydusd").exists() else "",
        f'daemon_mode = "{daemon_mode}"',
        "[log]",
        'level = "info"',
    ]
    if metrics:
        lines += ["[metrics]", f'address = "{metrics}"']
    return "\n".join(line for line in lines if line) + "\n"


@dataclass
class Rig:
    """The snapshotter and containerd of one test, under `base`."""

    base: Path
    snapshotter: Snapshotter
    containerd: Containerd

    def stop(self) -> None:
        """Everything started here is gone after this, whatever state the test left."""
        try:
            self.containerd.stop()
        finally:
            self.snapshotter.stop()
            kill_all(processes_naming(str(self.base)))  # nydusd daemons outlive the snapshotter by design
            unmount_below(str(self.base))


def make_rig(base: Path, *, daemon_mode: str = "dedicated", metrics: str = "",
             cri: dict[str, object] | None = None) -> Rig:  # fmt: skip
    base.mkdir(parents=True, exist_ok=True)
    root, address = base / "snapshotter", str(base / "snapshotter.sock")
    config_path = base / "snapshotter.toml"
    config_path.write_text(snapshotter_config(root, address, daemon_mode=daemon_mode, metrics=metrics))
    snapshotter = Snapshotter(root, address, config_path, base / "snapshotter.log")
    return Rig(base, snapshotter, Containerd(base / "containerd", address, cri))


def push_layout(registry_host: str, layout: Path, repository: str, tag: str) -> ImageReference:
    """Push the OCI layout's `latest` image as `registry_host/repository:tag` (a plain OCI image)."""
    ref = ImageReference.parse(f"{registry_host}/{repository}:{tag}")
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]

    def blob(digest: str) -> bytes:
        return (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()

    manifest_bytes = blob(manifest_digest)
    manifest = json.loads(manifest_bytes)
    client = RegistryClient(RegistryOptions(docker_config=""))
    try:
        for descriptor in [manifest["config"], *manifest["layers"]]:
            client.push_blob(ref, descriptor["digest"], blob(descriptor["digest"]))
        client.push_manifest(ref, manifest_bytes, manifest["mediaType"])
    finally:
        client.close()
    return ref
