"""The snapshotter's operations, in containerd's terms (its `snapshots.Snapshotter` interface).

Plain layers are overlay snapshots (containerd's own overlay snapshotter, in small). A Nydus data
layer (`nydus-blob`) that containerd asks to unpack is committed on the spot under its chain ID
and answered with `SnapshotExists`, so containerd skips its download (the remote-snapshot
protocol); the bootstrap layer is unpacked by containerd like any layer. A writable or view
snapshot above a committed bootstrap layer gets the image from nydusd as its lower dir.

One lock serialises every operation: containerd sends few, and a daemon start inside `Prepare`
must not race a `Remove` of the same image.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass

from daemon.snapshotter import labels
from daemon.snapshotter.config import SnapshotterConfig
from daemon.snapshotter.daemons import Daemons
from daemon.snapshotter.errors import InvalidSnapshotRequest, SnapshotExists, SnapshotInUse, SnapshotNotFound
from daemon.snapshotter.images import Images
from daemon.snapshotter.layout import Layout, Mount, snapshot_mounts
from daemon.snapshotter.store import Kind, Snapshot, Store
from daemon.storage.cache import DATA_SUFFIX, INDEX_SUFFIX, blob_usage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Usage:
    size: int  # bytes on disk
    inodes: int


def disk_usage(path: str) -> Usage:
    """Bytes on disk and inodes under `path`, each hard-linked inode once (as containerd counts)."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for directory, names, files in os.walk(path):
        for name in [*names, *files, ""]:
            full = os.path.join(directory, name) if name else directory
            try:
                info = os.lstat(full)
            except FileNotFoundError:
                continue
            key = (info.st_dev, info.st_ino)
            if key in seen:
                continue
            seen.add(key)
            if full != path:  # the snapshot's own directory is not its content
                size += info.st_blocks * 512
    return Usage(size, len(seen))


def merged(base: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    return {**base, **extra}


class Snapshotter:
    def __init__(self, config: SnapshotterConfig) -> None:
        self.config = config
        self.layout = Layout(config.root)
        self.layout.create()
        self.store = Store(self.layout.database)
        self.daemons = Daemons(config, self.layout, self.store)
        self.images = Images(config, self.layout, self.store, self.daemons)
        self._lock = threading.RLock()
        self.images.recover()

    def close(self) -> None:
        """Stop watching daemons; stop them too only with `cleanup_on_close`."""
        with self._lock:
            if self.config.cleanup_on_close:
                for image in self.store.images():
                    self.images.release(image.snapshot_id)
                self.images.stop_idle_shared()
            self.daemons.close()
            self.store.close()

    # -- lookups

    def _get(self, key: str) -> Snapshot:
        snapshot = self.store.get(key)
        if snapshot is None:
            raise SnapshotNotFound("no such snapshot", ("snapshot", key))
        return snapshot

    def _parent(self, parent: str) -> Snapshot | None:
        if not parent:
            return None
        found = self.store.get(parent)
        if found is None:
            raise SnapshotNotFound("parent does not exist", ("snapshot", parent))
        if found.kind != Kind.COMMITTED:
            raise InvalidSnapshotRequest("parent is not a committed snapshot", ("snapshot", parent))
        return found

    def _meta_layer(self, snapshot: Snapshot) -> tuple[list[Snapshot], Snapshot | None]:
        """The ancestors above the nearest committed bootstrap layer, and that layer (or None)."""
        above: list[Snapshot] = []
        for ancestor in self.store.ancestors(snapshot):
            if labels.is_meta_layer(ancestor.labels):
                return above, ancestor
            above.append(ancestor)
        return above, None

    def _mounts(self, snapshot: Snapshot) -> list[Mount]:
        above, meta = self._meta_layer(snapshot)
        if meta is not None and not labels.is_layer_unpack(snapshot.labels):
            lower_dirs = [self.layout.fs_dir(a.id) for a in above] + [self.images.serve(meta)]
        else:
            lower_dirs = [self.layout.fs_dir(a.id) for a in self.store.ancestors(snapshot)]
        return snapshot_mounts(
            snapshot.kind == Kind.VIEW, lower_dirs, self.layout.fs_dir(snapshot.id), self.layout.work_dir(snapshot.id)
        )

    def _create_dirs(self, snapshot: Snapshot) -> None:
        os.makedirs(self.layout.fs_dir(snapshot.id), exist_ok=True)
        if snapshot.kind == Kind.ACTIVE:
            os.makedirs(self.layout.work_dir(snapshot.id), exist_ok=True)

    # -- the interface

    def prepare(self, key: str, parent: str, new_labels: dict[str, str], *, kind: Kind = Kind.ACTIVE) -> list[Mount]:
        with self._lock:
            if self.store.get(key) is not None:
                raise SnapshotExists("snapshot exists", ("snapshot", key))
            parent_snapshot = self._parent(parent)
            parent_id = parent_snapshot.id if parent_snapshot else None
            if kind == Kind.ACTIVE and labels.is_layer_unpack(new_labels) and labels.is_data_layer(new_labels):
                target = new_labels[labels.TARGET_SNAPSHOT_REF]
                if self.store.get(target) is None:
                    remote = self.store.insert(target, parent_id, Kind.COMMITTED, new_labels)
                    self._create_dirs(remote)
                    log.info("remote snapshot %s (a Nydus data layer: not downloaded)", target)
                raise SnapshotExists("remote snapshot: the layer is served by nydusd", ("target snapshot", target))
            snapshot = self.store.insert(key, parent_id, kind, new_labels)
            self._create_dirs(snapshot)
            try:
                return self._mounts(snapshot)
            except BaseException:
                self._remove(snapshot)  # a Prepare that failed leaves nothing behind
                raise

    def view(self, key: str, parent: str, new_labels: dict[str, str]) -> list[Mount]:
        return self.prepare(key, parent, new_labels, kind=Kind.VIEW)

    def mounts(self, key: str) -> list[Mount]:
        with self._lock:
            snapshot = self._get(key)
            if snapshot.kind == Kind.COMMITTED:
                raise InvalidSnapshotRequest("a committed snapshot has no mounts", ("snapshot", key))
            return self._mounts(snapshot)

    def commit(self, name: str, key: str, new_labels: dict[str, str]) -> None:
        with self._lock:
            snapshot = self._get(key)
            if snapshot.kind != Kind.ACTIVE:
                raise SnapshotInUse(f"snapshot is {snapshot.kind.name.lower()}, not active", ("snapshot", key))
            if self.store.get(name) is not None:
                raise SnapshotExists("snapshot exists", ("snapshot", name))
            usage = disk_usage(self.layout.fs_dir(snapshot.id))
            self.store.commit(snapshot.id, name, merged(snapshot.labels, new_labels), usage.size, usage.inodes)

    def remove(self, key: str) -> None:
        with self._lock:
            snapshot = self._get(key)
            if self.store.has_children(snapshot.id):
                raise SnapshotInUse("snapshot has children", ("snapshot", key))
            self._remove(snapshot)

    def _remove(self, snapshot: Snapshot) -> None:
        self.images.release(snapshot.id)
        self.store.delete(snapshot.id)
        shutil.rmtree(self.layout.snapshot_dir(snapshot.id), ignore_errors=True)
        self.images.stop_idle_shared()

    def stat(self, key: str) -> Snapshot:
        with self._lock:
            return self._get(key)

    def update(self, name: str, new_labels: dict[str, str], paths: list[str]) -> Snapshot:
        """Update labels as containerd does: no paths replaces them all, `labels.<key>` sets or drops one."""
        with self._lock:
            snapshot = self._get(name)
            result = dict(snapshot.labels)
            if not paths:
                result = dict(new_labels)
            for path in paths:
                if path == "labels":
                    result = dict(new_labels)
                elif path.startswith("labels."):
                    label = path.removeprefix("labels.")
                    if label in new_labels:
                        result[label] = new_labels[label]
                    else:
                        result.pop(label, None)
                else:
                    raise InvalidSnapshotRequest(f"cannot update field {path!r}", ("snapshot", name))
            self.store.set_labels(snapshot.id, result)
            return self._get(name)

    def walk(self) -> list[Snapshot]:
        with self._lock:
            return self.store.all()

    def usage(self, key: str) -> Usage:
        with self._lock:
            snapshot = self._get(key)
            if snapshot.kind == Kind.COMMITTED:
                return Usage(snapshot.size, snapshot.inodes)
            return disk_usage(self.layout.fs_dir(snapshot.id))

    def cleanup(self) -> None:
        """Remove what no snapshot owns: directories a crash orphaned, daemons of removed images,
        and chunk-cache blobs that no bootstrap still here refers to."""
        with self._lock:
            snapshots = self.store.all()
            owned = {str(snapshot.id) for snapshot in snapshots}
            for name in os.listdir(self.layout.snapshots_dir):
                if name not in owned:
                    log.info("cleanup: removing orphaned snapshot directory %s", name)
                    shutil.rmtree(os.path.join(self.layout.snapshots_dir, name), ignore_errors=True)
            served = {image.daemon_id for image in self.store.images()}
            for record in self.store.daemons():
                if record.daemon_id not in served:
                    log.info("cleanup: stopping %s, which serves no image", record.daemon_id)
                    self.daemons.stop(record)
            if self.config.cache_gc:
                self._collect_cache([s for s in snapshots if labels.is_meta_layer(s.labels)])

    def _collect_cache(self, metas: list[Snapshot]) -> None:
        in_use = self.images.blobs_in_use(metas)
        if in_use is None:
            return
        work_dir = self.config.cache_work_dir
        for usage in blob_usage(work_dir):
            if usage.blob_id in in_use:
                continue
            for suffix in (INDEX_SUFFIX, DATA_SUFFIX):  # the index first: data without one holds nothing
                try:
                    os.unlink(os.path.join(work_dir, usage.blob_id + suffix))
                except FileNotFoundError:
                    pass
            log.info("cleanup: removed cached blob %s (%d bytes), used by no image", usage.blob_id[:16],
                     usage.disk_bytes)  # fmt: skip
