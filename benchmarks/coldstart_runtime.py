"""What the cold-start benchmark times: pulling and unpacking an OCI image, mounting a lazy image
(nydusd + overlayfs), and running a workload in it with `runc`.

Every step that mounts or starts something undoes it in a `finally` block: containers are
`runc delete -f`'d, overlays unmounted, daemons stopped as a process group and their FUSE mount
cleared, so an error or Ctrl-C in the middle of a measurement leaves the host as it was.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.coldstart_images import ENV_PATH
from benchmarks.coldstart_services import stop_group
from daemon.storage.registry import RegistryClient, RegistryOptions
from rafs import oci
from rafs.oci import ImageReference

PULL_CONCURRENCY = 3  # layers downloaded at once, as containerd does by default
MOUNT_TIMEOUT_S = 60.0
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"


@dataclass
class Phases:
    """Wall seconds of each named phase of one measured start, in order."""

    seconds: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.perf_counter)

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def registry_client() -> RegistryClient:
    """A client with no pooled connections and no credentials: a host that has never pulled."""
    return RegistryClient(RegistryOptions(docker_config=""))


# ---- runc


_SPEC_TEMPLATE: dict[str, object] = {}


def _spec_template() -> dict[str, object]:
    """`runc spec`'s default config (made once per process, in a scratch directory)."""
    if not _SPEC_TEMPLATE:
        scratch = Path(f"/tmp/coldstart-spec-{os.getpid()}")
        scratch.mkdir(exist_ok=True)
        try:
            subprocess.run(["runc", "spec", "--bundle", str(scratch)], check=True)
            _SPEC_TEMPLATE.update(json.loads((scratch / "config.json").read_text()))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
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


def run_container(bundle: Path, rootfs: Path, args: Sequence[str]) -> str:
    """Run `args` in `rootfs` to completion with runc; its stdout. A failing workload raises."""
    write_bundle(bundle, rootfs, args)
    container_id = f"coldstart-{uuid.uuid4().hex[:12]}"
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


def unpack_layer(layer: Path, rootfs: Path) -> None:
    """Extract a tar.gz layer over `rootfs` with GNU tar (owners, modes, xattrs), then whiteouts."""
    completed = subprocess.run(
        ["tar", "-xzvf", str(layer), "-C", str(rootfs), "--numeric-owner", "--same-owner",
         "--same-permissions", "--xattrs", "--xattrs-include=*"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(f"tar -xzf {layer}: {completed.stderr.strip()[-2000:]}")
    entries = completed.stdout.splitlines()
    if any(os.path.basename(entry.rstrip("/")).startswith(WHITEOUT_PREFIX) for entry in entries):
        _apply_whiteouts(rootfs, entries)


def oci_pull_unpack(host: str, repository: str, tag: str, work: Path, phases: Phases) -> Path:
    """Pull every layer through `host` (layers in parallel), unpacking each as soon as the
    layers below it are unpacked, as containerd does; returns the rootfs."""
    ref = ImageReference(host, repository, tag)
    downloads, rootfs = work / "downloads", work / "rootfs"
    downloads.mkdir(parents=True)
    rootfs.mkdir()
    client = registry_client()
    try:
        manifest = client.get_image_manifest(ref).document
        config = manifest["config"]
        assert isinstance(config, dict)
        client.read_blob(ref, str(config["digest"]))
        layers = manifest["layers"]
        assert isinstance(layers, list)
        with ThreadPoolExecutor(PULL_CONCURRENCY) as pool:
            pending: list[Future[int]] = []
            paths = []
            for index, layer in enumerate(layers):
                path = downloads / f"layer-{index}.tar.gz"
                paths.append(path)
                pending.append(pool.submit(client.download_blob, ref, str(layer["digest"]), str(path)))
            for path, future in zip(paths, pending, strict=True):
                future.result()
                unpack_layer(path, rootfs)
                path.unlink()
    finally:
        client.close()
    phases.mark("pull+unpack")
    return rootfs


# ---- lazy: nydusd + overlayfs


def fetch_bootstrap(host: str, repository: str, tag: str, output: Path) -> dict[str, object]:
    """Fetch a converted image's manifest and bootstrap layer through `host`; the manifest."""
    ref = ImageReference(host, repository, tag)
    client = registry_client()
    try:
        manifest = client.get_image_manifest(ref).document
        layers = manifest["layers"]
        assert isinstance(layers, list)
        bootstrap_layers = [
            layer
            for layer in layers
            if isinstance(layer, dict) and layer.get("annotations", {}).get(oci.ANNOTATION_NYDUS_BOOTSTRAP) == "true"
        ]
        if len(bootstrap_layers) != 1:
            raise RuntimeError(f"{ref}: expected one bootstrap layer, found {len(bootstrap_layers)}")
        data = client.read_blob(ref, str(bootstrap_layers[0]["digest"]))
    finally:
        client.close()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member in archive:
            if member.name.removeprefix("./") == oci.BOOTSTRAP_PATH_IN_LAYER and member.isfile():
                source = archive.extractfile(member)
                assert source is not None
                output.parent.mkdir(parents=True, exist_ok=True)
                output.write_bytes(source.read())
                return manifest
    raise RuntimeError(f"{ref}: the bootstrap layer has no {oci.BOOTSTRAP_PATH_IN_LAYER}")


def is_mounted(path: Path) -> bool:
    return os.path.ismount(path)


def _unmount(path: Path) -> None:
    if is_mounted(path):
        completed = subprocess.run(["umount", str(path)], capture_output=True, check=False)
        if completed.returncode != 0 and is_mounted(path):
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@contextlib.contextmanager
def lazy_rootfs(nydusd_args: Sequence[str], work: Path, config: dict[str, object], phases: Phases) -> Iterator[Path]:
    """Start nydusd (`nydusd_args` + mountpoint + config), overlay a writable upper on its mount
    as a runtime would, and yield the merged rootfs; everything is undone on the way out."""
    mountpoint, upper, overlay_work, merged = (work / name for name in ("lower", "upper", "overlay-work", "merged"))
    for directory in (mountpoint, upper, overlay_work, merged):
        directory.mkdir(parents=True, exist_ok=True)
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
        phases.mark("mount")
        options = f"lowerdir={mountpoint},upperdir={upper},workdir={overlay_work}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True)
        try:
            phases.mark("overlay")
            yield merged
        finally:
            _unmount(merged)
    finally:
        stop_group(daemon)
        _unmount(mountpoint)
