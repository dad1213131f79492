"""Where things live under `--root`, and the mounts handed to containerd.

    <root>/metadata.db               snapshots, daemons, images (store.py)
    <root>/snapshots/<id>/fs         a snapshot's files (the upper dir of an active one)
    <root>/snapshots/<id>/work       overlayfs' work dir
    <root>/mnt/<daemon id>           a nydusd's FUSE mountpoint (shared mode: images in subdirs)
    <root>/socket/<daemon id>/api.sock, <root>/config/<daemon id>.json, <root>/logs/<daemon id>.log
    <root>/cache                     the chunk cache all daemons share (unless cache_manager.cache_dir)

Mounts follow containerd's overlay snapshotter: one layer is a bind mount, more are an overlay
whose lower dirs are listed top first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Mount:
    """`mount -t type -o options source <target>`: what containerd (or the shim) runs."""

    type: str
    source: str
    options: tuple[str, ...]


def bind(source: str, *, readonly: bool) -> Mount:
    return Mount("bind", source, ("ro" if readonly else "rw", "rbind"))


def overlay(lower_dirs: list[str], upper_dir: str = "", work_dir: str = "") -> Mount:
    """An overlay of `lower_dirs` (top first); read-only without an upper dir."""
    options = []
    if upper_dir:
        options += [f"workdir={work_dir}", f"upperdir={upper_dir}"]
    options.append(f"lowerdir={':'.join(lower_dirs)}")
    return Mount("overlay", "overlay", tuple(options))


def snapshot_mounts(kind_is_view: bool, lower_dirs: list[str], fs_dir: str, work_dir: str) -> list[Mount]:
    """The mounts of a snapshot over `lower_dirs` (top first), as containerd's overlay snapshotter makes them."""
    if not lower_dirs:
        return [bind(fs_dir, readonly=kind_is_view)]
    if kind_is_view:
        if len(lower_dirs) == 1:
            return [bind(lower_dirs[0], readonly=True)]
        return [overlay(lower_dirs)]
    return [overlay(lower_dirs, fs_dir, work_dir)]


@dataclass(frozen=True)
class Layout:
    root: str

    @property
    def database(self) -> str:
        return os.path.join(self.root, "metadata.db")

    @property
    def snapshots_dir(self) -> str:
        return os.path.join(self.root, "snapshots")

    def snapshot_dir(self, snapshot_id: int) -> str:
        return os.path.join(self.snapshots_dir, str(snapshot_id))

    def fs_dir(self, snapshot_id: int) -> str:
        return os.path.join(self.snapshot_dir(snapshot_id), "fs")

    def work_dir(self, snapshot_id: int) -> str:
        return os.path.join(self.snapshot_dir(snapshot_id), "work")

    def mountpoint(self, daemon_id: str) -> str:
        return os.path.join(self.root, "mnt", daemon_id)

    def api_sock(self, daemon_id: str) -> str:
        return os.path.join(self.root, "socket", daemon_id, "api.sock")

    def config_path(self, daemon_id: str) -> str:
        return os.path.join(self.root, "config", f"{daemon_id}.json")

    def log_path(self, daemon_id: str) -> str:
        return os.path.join(self.root, "logs", f"{daemon_id}.log")

    def create(self) -> None:
        for name in ("snapshots", "mnt", "socket", "config", "logs"):
            os.makedirs(os.path.join(self.root, name), exist_ok=True)
