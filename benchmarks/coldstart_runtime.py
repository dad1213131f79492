"""What the cold-start benchmark times: pulling and unpacking an OCI image, mounting a lazy image
(nydusd + overlayfs), and running a workload in it with `runc`.

Every step that mounts or starts something undoes it in a `finally` block: containers are
`runc delete -f`'d, overlays unmounted, daemons stopped as a process group and their FUSE mount
cleared, so an error or Ctrl-C in the middle of a measurement leaves the host as it was.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import requests

import daemon
import native
import rafs
from benchmarks.coldstart_images import ENV_PATH
from benchmarks.coldstart_services import stop_group
from daemon.storage.registry import RegistryClient, RegistryOptions
from rafs.oci import ImageReference

PULL_CONCURRENCY = 3  # layers downloaded at once, as containerd does by default
PIECE_BYTES = 1 << 20
DOWNLOAD_TIMEOUT_S = 60.0  # between two pieces of a layer
MOUNT_TIMEOUT_S = 60.0
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"


@dataclass
class Phases:
    """The moments of one measured start, as wall-clock times (`time.time()`, the clock nydusd's
    timeline and the shaper's series use), from `started_at` (nothing on the host yet) to the
    event "exit" (the workload's)."""

    started_at: float = field(default_factory=time.time)
    events: dict[str, float] = field(default_factory=dict)  # event name -> when

    def mark(self, event: str, at: float | None = None) -> None:
        self.events[event] = time.time() if at is None else at

    def since_start(self) -> dict[str, float]:
        """Seconds from the start to each event, in the order they happened."""
        ordered = sorted(self.events.items(), key=lambda item: item[1])
        return {event: round(at - self.started_at, 4) for event, at in ordered}

    @property
    def total(self) -> float:
        return self.events["exit"] - self.started_at


# What nydusd imports to serve (its command line, the FUSE side, the registry client and the
# bootstrap fetch): loaded by `load_tools` after the page cache is dropped.
DAEMON_MODULES = "daemon.cli, daemon.serve, daemon.storage.backends, daemon.storage.image"


def drop_page_cache() -> None:
    """Write back and drop the page cache, dentries and inodes, so a start reads from disk (or
    the network); then load the tools' own code again (`load_tools`)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as control:
        control.write("3\n")
    load_tools()


def load_tools() -> None:
    """Read the tools' code back into memory: runc, tar, and nydusd's interpreter and modules.

    A host that starts containers all day has its runtime in memory; what a cold start finds cold
    is the image (and, for a warm one, the chunk cache on disk). The OCI puller runs inside this
    harness's own process, loaded already, so without this the lazy modes alone would pay for
    reading a Python interpreter and some 300 module files from disk (about 0.14 s measured here).
    The project's bytecode is written first, as an install writes it (`scripts/install.sh`), so
    that nydusd does not compile its modules at each start when PYTHONDONTWRITEBYTECODE is set.
    """
    packages = [os.path.dirname(package.__file__ or ".") for package in (daemon, native, rafs)]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-c", f"import {DAEMON_MODULES}"], check=True)
    for tool in ("runc", "tar"):
        subprocess.run([tool, "--version"], check=True, stdout=subprocess.DEVNULL)


def registry_client() -> RegistryClient:
    """A client with no pooled connections and no credentials: a host that has never pulled."""
    return RegistryClient(RegistryOptions(docker_config=""))


# ---- runc


_SPEC_TEMPLATE: dict[str, object] = {}
_SPEC_LOCK = threading.Lock()  # the cluster benchmark's hosts write bundles from threads at once


def _spec_template() -> dict[str, object]:
    """`runc spec`'s default config (made once per process, in a scratch directory)."""
    with _SPEC_LOCK:
        if not _SPEC_TEMPLATE:
            with tempfile.TemporaryDirectory(prefix="coldstart-spec-") as scratch:
                subprocess.run(["runc", "spec", "--bundle", scratch], check=True)
                _SPEC_TEMPLATE.update(json.loads((Path(scratch) / "config.json").read_text()))
        return copy.deepcopy(_SPEC_TEMPLATE)


def write_bundle(bundle: Path, rootfs: Path, args: Sequence[str]) -> None:
    """A runc bundle in `bundle` running `args` in `rootfs` (writable, no terminal)."""
    spec = _spec_template()
    spec["root"] = {"path": str(rootfs), "readonly": False}
    process = spec["process"]
    assert isinstance(process, dict)
    process.update({"terminal": False, "args": list(args), "env": [ENV_PATH, "HOME=/root"], "cwd": "/"})
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))


def run_container(bundle: Path, rootfs: Path, args: Sequence[str], container_id: str = "") -> str:
    """Run `args` in `rootfs` to completion with runc (as `container_id`, default a fresh one),
    deleting the container after; its stdout. A failing workload raises."""
    write_bundle(bundle, rootfs, args)
    container_id = container_id or f"coldstart-{uuid.uuid4().hex[:12]}"
    try:
        completed = subprocess.run(
            ["runc", "run", "--bundle", str(bundle), container_id],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        subprocess.run(["runc", "delete", "-f", container_id], capture_output=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"workload {' '.join(args)} exited {completed.returncode}: {completed.stderr.strip()[-2000:]}"
        )
    return completed.stdout


# ---- OCI: pull every layer, unpack, run


def _apply_whiteouts(rootfs: Path, layer_entries: list[str]) -> None:
    """Apply the layer's whiteouts to what lower layers left, then drop the markers."""
    added = {entry.rstrip("/").removeprefix("./") for entry in layer_entries}
    for entry in sorted(added):
        parent, _, name = entry.rpartition("/")
        if not name.startswith(WHITEOUT_PREFIX):
            continue
        directory = rootfs / parent
        if name == OPAQUE_WHITEOUT:
            for child in os.listdir(directory):
                if f"{parent}/{child}".lstrip("/") not in added:
                    _remove(directory / child)
        else:
            _remove(directory / name[len(WHITEOUT_PREFIX) :])
        _remove(directory / name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def unpack_stream(pieces: Iterable[bytes], rootfs: Path, name: str, digest: str = "") -> None:
    """Extract a tar.gz layer arriving as `pieces` over `rootfs` with GNU tar (owners, modes,
    xattrs) as it arrives, then apply its whiteouts; the layer must match `digest` when given."""
    tar = subprocess.Popen(
        ["tar", "-xzvf", "-", "-C", str(rootfs), "--numeric-owner", "--same-owner", "--same-permissions",
         "--xattrs", "--xattrs-include=*"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert tar.stdin is not None and tar.stdout is not None and tar.stderr is not None
    outputs: dict[str, bytes] = {}
    readers = [  # tar lists entries while it reads: drain both pipes or it stalls
        threading.Thread(target=_drain, args=(tar.stdout, outputs, "listing"), daemon=True),
        threading.Thread(target=_drain, args=(tar.stderr, outputs, "errors"), daemon=True),
    ]
    for reader in readers:
        reader.start()
    layer_hash = hashlib.sha256()
    try:
        for data in pieces:
            layer_hash.update(data)
            tar.stdin.write(data)
    except BrokenPipeError:
        pass  # tar stopped reading: its exit status and message say why
    finally:  # also when `pieces` failed: tar sees the end of its input and exits
        try:
            tar.stdin.close()
        except BrokenPipeError:
            pass
        returncode = tar.wait()
        for reader in readers:
            reader.join()
    if returncode != 0:
        raise RuntimeError(f"tar -xzf {name}: {outputs.get('errors', b'').decode(errors='replace').strip()[-2000:]}")
    if digest and "sha256:" + layer_hash.hexdigest() != digest:
        raise RuntimeError(f"layer {name}: content differs from its digest {digest}")
    entries = outputs.get("listing", b"").decode(errors="surrogateescape").splitlines()
    if any(os.path.basename(entry.rstrip("/")).startswith(WHITEOUT_PREFIX) for entry in entries):
        _apply_whiteouts(rootfs, entries)


def _drain(stream: IO[bytes], outputs: dict[str, bytes], key: str) -> None:
    with stream:  # read to the end, then closed: the pipe is this thread's alone
        outputs[key] = stream.read()


def _file_pieces(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as file:
        while data := file.read(PIECE_BYTES):
            yield data


def unpack_layer(layer: Path, rootfs: Path) -> None:
    """Extract a tar.gz layer file over `rootfs`, then its whiteouts."""
    unpack_stream(_file_pieces(layer), rootfs, str(layer))


class LayerDownload:
    """One layer's body, read from the registry in a worker thread into memory as it arrives:
    the unpacker takes the pieces in order while later ones still arrive (no temporary file)."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        self.url = url
        self.stop = stop
        self.pieces: queue.Queue[bytes | BaseException | None] = queue.Queue()  # None: the end

    def run(self) -> None:
        try:
            with requests.get(self.url, stream=True, timeout=DOWNLOAD_TIMEOUT_S) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"GET {self.url}: HTTP {response.status_code}")
                for data in response.iter_content(PIECE_BYTES):
                    if self.stop.is_set():
                        raise RuntimeError(f"GET {self.url}: stopped")
                    self.pieces.put(data)
            self.pieces.put(None)
        except BaseException as error:
            self.pieces.put(error)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            piece = self.pieces.get()
            if piece is None:
                return
            if isinstance(piece, BaseException):
                raise piece
            yield piece


def oci_pull_unpack(host: str, repository: str, tag: str, work: Path, phases: Phases) -> Path:
    """The best case of an OCI pull: each layer's download streams into `tar -xz` (no temporary
    file); up to `PULL_CONCURRENCY` layers download at once while the layers are unpacked in order,
    each as soon as the layers below it are, as containerd does. Returns the rootfs."""
    ref = ImageReference(host, repository, tag)
    rootfs = work / "rootfs"
    rootfs.mkdir(parents=True)
    client = registry_client()
    try:
        manifest = client.get_image_manifest(ref).document
        config = manifest["config"]
        assert isinstance(config, dict)
        client.read_blob(ref, str(config["digest"]))
    finally:
        client.close()
    layers = manifest["layers"]
    assert isinstance(layers, list)
    stop = threading.Event()
    downloads = [LayerDownload(f"http://{host}/v2/{repository}/blobs/{layer['digest']}", stop) for layer in layers]
    with ThreadPoolExecutor(PULL_CONCURRENCY) as pool:
        try:
            for download in downloads:
                pool.submit(download.run)
            for download, layer in zip(downloads, layers, strict=True):
                unpack_stream(download, rootfs, str(layer["digest"]), str(layer["digest"]))
        finally:
            stop.set()
    phases.mark("unpacked")
    return rootfs


# ---- lazy: nydusd + overlayfs


def is_mounted(path: Path) -> bool:
    return os.path.ismount(path)


def unmount(path: Path) -> None:
    """Unmount `path` if it is a mount; lazily if a plain unmount leaves it mounted (busy)."""
    if is_mounted(path):
        completed = subprocess.run(["umount", str(path)], capture_output=True, check=False)
        if completed.returncode != 0 and is_mounted(path):
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@contextlib.contextmanager
def overlay_rootfs(lower: Path, work: Path) -> Iterator[Path]:
    """`lower` under a fresh writable upper directory, as a runtime gives a container; unmounted on the way out."""
    upper, overlay_work, merged = (work / name for name in ("upper", "overlay-work", "merged"))
    for directory in (upper, overlay_work, merged):
        directory.mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={lower},upperdir={upper},workdir={overlay_work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True)
    try:
        yield merged
    finally:
        unmount(merged)


@contextlib.contextmanager
def lazy_rootfs(nydusd_args: Sequence[str], work: Path, config: dict[str, object], phases: Phases) -> Iterator[Path]:
    """Start nydusd (`nydusd_args` + mountpoint + config), overlay a writable upper on its mount
    as a runtime would, and yield the merged rootfs; everything is undone on the way out (the
    daemon stopped with SIGTERM, so that it unmounts and writes what it was asked to)."""
    mountpoint = work / "lower"
    mountpoint.mkdir(parents=True, exist_ok=True)
    config_path = work / "nydusd.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = work / "nydusd.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            ["nydusd", *nydusd_args, "--mountpoint", str(mountpoint), "--config", str(config_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not is_mounted(mountpoint):
            if daemon.poll() is not None:
                raise RuntimeError(f"nydusd exited {daemon.returncode}: {log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nydusd did not mount within {MOUNT_TIMEOUT_S} s")
            time.sleep(0.002)
        phases.mark("mounted")
        with overlay_rootfs(mountpoint, work) as merged:
            yield merged
    finally:
        stop_group(daemon)
        unmount(mountpoint)
