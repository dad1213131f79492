"""Snapshot and daemon metadata in SQLite under `--root` (`metadata.db`).

What must survive a crash or a restart of the snapshotter lives here: every snapshot (its name,
parent, kind, labels, timestamps, and usage once committed), every nydusd it started (pid, API
socket, mountpoint) and which daemon serves which image. Each method is one transaction (WAL,
synchronous=FULL), so a crash leaves the database at the last completed request; directories on
disk are created after and removed after the rows, and `Cleanup` removes what a crash orphaned.
The store knows nothing of containerd or gRPC: the service translates.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    parent_id INTEGER REFERENCES snapshots(id),
    kind INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    labels TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
CREATE TABLE IF NOT EXISTS daemons (
    daemon_id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    pid INTEGER NOT NULL,
    api_sock TEXT NOT NULL,
    mountpoint TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    snapshot_id INTEGER PRIMARY KEY REFERENCES snapshots(id),
    daemon_id TEXT NOT NULL,
    image_ref TEXT NOT NULL,
    mount_path TEXT NOT NULL
);
"""


class Kind(IntEnum):
    """containerd's snapshot kinds, with its numbers (the proto's `Kind`)."""

    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


@dataclass(frozen=True)
class Snapshot:
    id: int
    name: str
    parent_id: int | None
    parent_name: str
    kind: Kind
    created_ns: int
    updated_ns: int
    labels: dict[str, str]
    size: int
    inodes: int


@dataclass(frozen=True)
class DaemonRecord:
    """A nydusd the snapshotter started: dedicated (one image at `mountpoint`) or shared (images below it)."""

    daemon_id: str
    mode: str
    pid: int
    api_sock: str
    mountpoint: str


@dataclass(frozen=True)
class ImageRecord:
    """An image being served: the bootstrap snapshot, its daemon, and where its root is visible."""

    snapshot_id: int
    daemon_id: str
    image_ref: str
    mount_path: str


_SELECT = (
    "SELECT s.id, s.name, s.parent_id, COALESCE(p.name, ''), s.kind, s.created_ns, s.updated_ns, s.labels, "
    "s.size, s.inodes FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id"
)


def _snapshot(row: Any) -> Snapshot:
    id_, name, parent_id, parent_name, kind, created, updated, labels, size, inodes = row
    return Snapshot(
        int(id_),
        str(name),
        None if parent_id is None else int(parent_id),
        str(parent_name),
        Kind(kind),
        int(created),
        int(updated),
        json.loads(str(labels)),
        int(size),
        int(inodes),
    )


class Store:
    """One SQLite connection shared by the service's threads behind a lock."""

    def __init__(self, path: str) -> None:
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All statements in the body commit together, or none do."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- snapshots

    def get(self, name: str) -> Snapshot | None:
        with self._lock:
            row = self._db.execute(f"{_SELECT} WHERE s.name = ?", (name,)).fetchone()
        return None if row is None else _snapshot(row)

    def by_id(self, snapshot_id: int) -> Snapshot | None:
        with self._lock:
            row = self._db.execute(f"{_SELECT} WHERE s.id = ?", (snapshot_id,)).fetchone()
        return None if row is None else _snapshot(row)

    def all(self) -> list[Snapshot]:
        with self._lock:
            return [_snapshot(row) for row in self._db.execute(f"{_SELECT} ORDER BY s.id")]

    def ancestors(self, snapshot: Snapshot) -> list[Snapshot]:
        """The parent, its parent, ... down to the base layer."""
        chain = []
        parent_id = snapshot.parent_id
        while parent_id is not None:
            parent = self.by_id(parent_id)
            if parent is None:
                break
            chain.append(parent)
            parent_id = parent.parent_id
        return chain

    def has_children(self, snapshot_id: int) -> bool:
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM snapshots WHERE parent_id = ?", (snapshot_id,)).fetchone() is not None
            )

    def insert(
        self, name: str, parent_id: int | None, kind: Kind, labels: dict[str, str], size: int = 0, inodes: int = 0
    ) -> Snapshot:
        now = time.time_ns()
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO snapshots (name, parent_id, kind, created_ns, updated_ns, labels, size, inodes) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, parent_id, int(kind), now, now, json.dumps(labels, sort_keys=True), size, inodes),
            )
            snapshot_id = cursor.lastrowid
        assert snapshot_id is not None
        found = self.by_id(snapshot_id)
        assert found is not None
        return found

    def commit(self, snapshot_id: int, name: str, labels: dict[str, str], size: int, inodes: int) -> None:
        """An active snapshot becomes committed under `name`, keeping its id (and so its directory)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE snapshots SET name = ?, kind = ?, labels = ?, size = ?, inodes = ?, updated_ns = ? WHERE id = ?",
                (name, int(Kind.COMMITTED), json.dumps(labels, sort_keys=True), size, inodes, time.time_ns(),
                 snapshot_id),
            )  # fmt: skip

    def set_labels(self, snapshot_id: int, labels: dict[str, str]) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE snapshots SET labels = ?, updated_ns = ? WHERE id = ?",
                (json.dumps(labels, sort_keys=True), time.time_ns(), snapshot_id),
            )

    def delete(self, snapshot_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM images WHERE snapshot_id = ?", (snapshot_id,))
            db.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))

    # -- daemons and the images they serve

    def put_daemon(self, record: DaemonRecord) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO daemons (daemon_id, mode, pid, api_sock, mountpoint) VALUES (?, ?, ?, ?, ?)",
                (record.daemon_id, record.mode, record.pid, record.api_sock, record.mountpoint),
            )

    def daemon(self, daemon_id: str) -> DaemonRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT daemon_id, mode, pid, api_sock, mountpoint FROM daemons WHERE daemon_id = ?", (daemon_id,)
            ).fetchone()
        return None if row is None else DaemonRecord(*row)

    def daemons(self) -> list[DaemonRecord]:
        with self._lock:
            rows = self._db.execute("SELECT daemon_id, mode, pid, api_sock, mountpoint FROM daemons ORDER BY daemon_id")
            return [DaemonRecord(*row) for row in rows]

    def delete_daemon(self, daemon_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM daemons WHERE daemon_id = ?", (daemon_id,))

    def put_image(self, record: ImageRecord) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO images (snapshot_id, daemon_id, image_ref, mount_path) VALUES (?, ?, ?, ?)",
                (record.snapshot_id, record.daemon_id, record.image_ref, record.mount_path),
            )

    def image(self, snapshot_id: int) -> ImageRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT snapshot_id, daemon_id, image_ref, mount_path FROM images WHERE snapshot_id = ?", (snapshot_id,)
            ).fetchone()
        return None if row is None else ImageRecord(*row)

    def images(self) -> list[ImageRecord]:
        with self._lock:
            rows = self._db.execute("SELECT snapshot_id, daemon_id, image_ref, mount_path FROM images ORDER BY 1")
            return [ImageRecord(*row) for row in rows]

    def delete_image(self, snapshot_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM images WHERE snapshot_id = ?", (snapshot_id,))
