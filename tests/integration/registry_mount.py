"""Helpers for `nydusd --image` tests: a directory pushed as an OCI image, converted with
`nydusify convert`, and a daemon that mounts the result straight from the registry."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from daemon.storage.registry import RegistryClient, RegistryOptions
from rafs.oci import ImageReference, sha256_digest
from tests.daemon.nydusd import REPO, Daemon, force_unmount, start_daemon
from tests.reference import walk_directory
from tests.registry.images import image_of_layers, push_image

MTIME_S = 1_700_000_000


def fix_mtimes(root: str) -> None:
    """Whole-second mtimes everywhere, so a tar layer (seconds) carries them exactly."""
    for _, full in walk_directory(root):
        os.utime(full, ns=(MTIME_S * 10**9, MTIME_S * 10**9), follow_symlinks=False)


def directory_layer(root: str) -> tuple[bytes, str]:
    """`root` as a gzip layer (hard links kept) and its diff_id; the root entry is left out."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relative, full in sorted(walk_directory(root))[1:]:
            info = tar.gettarinfo(os.fsdecode(full), arcname=relative)
            if info.isreg():
                with open(full, "rb") as file:
                    tar.addfile(info, file)
            else:
                tar.addfile(info)
    return gzip.compress(raw.getvalue(), mtime=0), sha256_digest(raw.getvalue())


def push_directory(registry_host: str, repository: str, root: str) -> ImageReference:
    """Push `root` as a one-layer OCI image; returns its reference."""
    ref = ImageReference.parse(f"{registry_host}/{repository}:src")
    client = RegistryClient(RegistryOptions(docker_config=""))
    try:
        push_image(client, ref, image_of_layers([directory_layer(root)]))
    finally:
        client.close()
    return ref


def convert(source: ImageReference, work_dir: str, *extra: str, tag: str = "nydus") -> ImageReference:
    """`nydusify convert` of `source` to the tag `tag` beside it."""
    target = ImageReference.parse(f"{source.registry}/{source.repository}:{tag}")
    command = [
        sys.executable, "-m", "builder.nydusify", "convert", "--source", str(source), "--target", str(target),
        "--work-dir", work_dir, *extra,
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert completed.returncode == 0, completed.stderr
    return target


def write_image_config(path: str, work_dir: str, *, backend: Mapping[str, object] | None = None, **top: object) -> str:
    """A config for `--image`: a blobcache in `work_dir`, registry options from `backend`."""
    device: dict[str, object] = {"cache": {"type": "blobcache", "config": {"work_dir": work_dir}}}
    if backend is not None:
        device["backend"] = {"type": "registry", "config": backend}
    with open(path, "w", encoding="utf-8") as file:
        json.dump({"device": device, **top}, file)
    return path


def start_image_daemon(
    image: str,
    mountpoint: str,
    config: str,
    log_path: str,
    *,
    extra: Sequence[str] = (),
    timeout_s: float = 60.0,
    fstype: str = "fuse",
) -> Daemon:
    """`nydusd --image` running and mounted; raises with its log if it does not mount."""
    source = ["--image", image, "--config", config]
    return start_daemon(source, mountpoint, log_path, extra=extra, timeout_s=timeout_s, fstype=fstype)


@contextmanager
def image_mounted(
    image: str, mountpoint: str, config: str, log_path: str, *, extra: Sequence[str] = (), fstype: str = "fuse"
) -> Iterator[Daemon]:
    """A mounted `nydusd --image` for the `with` body; stopped and unmounted on every exit."""
    daemon = start_image_daemon(image, mountpoint, config, log_path, extra=extra, fstype=fstype)
    try:
        yield daemon
    finally:
        daemon.stop()
        force_unmount(mountpoint)
