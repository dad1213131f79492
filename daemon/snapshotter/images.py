"""Images served by nydusd: which daemon serves a bootstrap snapshot, with which config, and where
its root is visible.

Dedicated mode: one `nydusd fuse --bootstrap` per image, mounted at `<root>/mnt/nydusd-<id>`.
Shared mode: one `nydusd fuse` without a bootstrap at `<root>/mnt/nydusd-shared`, each image
mounted into it as `/<id>` through `POST /api/v1/mount`. In both, the config is the
`--nydusd-config` template with the registry (host and repository) of the image reference and
the shared chunk cache; credentials come from the docker config, which nydusd reads itself.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from typing import Any

from daemon.snapshotter import labels
from daemon.snapshotter.config import SnapshotterConfig
from daemon.snapshotter.daemons import SHARED_DAEMON_ID, Daemons, dedicated_daemon_id
from daemon.snapshotter.errors import DaemonStartFailed, MissingImageReference, SnapshotterConfigError
from daemon.snapshotter.layout import Layout
from daemon.snapshotter.store import DaemonRecord, ImageRecord, Snapshot, Store
from rafs.errors import NydusError
from rafs.mapped import open_bootstrap
from rafs.oci import ImageReference

log = logging.getLogger(__name__)

DEFAULT_NYDUSD_CONFIG: dict[str, Any] = {
    "device": {
        "backend": {"type": "registry", "config": {"timeout": 5, "connect_timeout": 5, "retry_limit": 2}},
        "cache": {"type": "blobcache"},
    },
    "mode": "direct",
    "digest_validate": False,
    "enable_xattr": True,
    "fs_prefetch": {"enable": True, "threads_count": 8, "merging_size": 1048576},
}


def load_template(path: str) -> dict[str, Any]:
    """The nydusd config template (`--nydusd-config`), or the built-in one."""
    if not path:
        return copy.deepcopy(DEFAULT_NYDUSD_CONFIG)
    try:
        with open(path, encoding="utf-8") as file:
            template = json.load(file)
    except (OSError, ValueError) as error:
        raise SnapshotterConfigError(f"nydusd config {path}: {error}") from None
    if not isinstance(template, dict):
        raise SnapshotterConfigError(f"nydusd config {path}: not a JSON object")
    return template


class Images:
    def __init__(self, config: SnapshotterConfig, layout: Layout, store: Store, daemons: Daemons) -> None:
        self.config = config
        self.layout = layout
        self.store = store
        self.daemons = daemons
        self.template = load_template(config.nydusd_config)

    def bootstrap_path(self, meta: Snapshot) -> str:
        return os.path.join(self.layout.fs_dir(meta.id), labels.BOOTSTRAP_IN_SNAPSHOT)

    def nydusd_config(self, image_ref: str) -> dict[str, Any]:
        """The template with this image's registry and the shared cache directory filled in."""
        ref = ImageReference.parse(image_ref)
        config = copy.deepcopy(self.template)
        device = config.setdefault("device", {})
        backend = device.setdefault("backend", {})
        backend["type"] = "registry"
        backend_config = backend.setdefault("config", {})
        backend_config["host"] = ref.registry
        backend_config["repo"] = ref.repository
        cache = device.setdefault("cache", {"type": "blobcache"})
        if cache.get("type") == "blobcache":
            cache.setdefault("config", {})["work_dir"] = self.config.cache_work_dir
        return config

    def image_ref_of(self, meta: Snapshot) -> str:
        ref = labels.image_reference(meta.labels)
        if ref is None:
            raise MissingImageReference(labels.HOW_TO_SEND_THE_REFERENCE, ("snapshot", meta.name))
        return ref

    def serve(self, meta: Snapshot) -> str:
        """The directory where `meta`'s image is visible, starting or reattaching its daemon."""
        image_ref = self.image_ref_of(meta)
        bootstrap = self.bootstrap_path(meta)
        if not os.path.isfile(bootstrap):
            raise DaemonStartFailed(
                f"no {labels.BOOTSTRAP_IN_SNAPSHOT} in the bootstrap layer", ("snapshot", meta.name)
            )
        os.makedirs(self.config.cache_work_dir, exist_ok=True)
        if self.config.daemon_mode == "shared":
            return self._serve_shared(meta, image_ref, bootstrap)
        return self._serve_dedicated(meta, image_ref, bootstrap)

    def _may_restart(self, record: DaemonRecord) -> None:
        if self.config.recover_policy == "none":
            raise DaemonStartFailed('not running, and recover_policy is "none"', ("daemon", record.daemon_id))

    def _serve_dedicated(self, meta: Snapshot, image_ref: str, bootstrap: str) -> str:
        daemon_id = dedicated_daemon_id(meta.id)
        record = self.store.daemon(daemon_id)
        if record is None or not self.daemons.is_running(record):
            if record is not None:
                self._may_restart(record)
                log.warning("%s of %s is not running: starting it again on the same cache", daemon_id, image_ref)
                self.daemons.stop(record)  # clears what is left: a stale mount, the socket
            config_path = self.layout.config_path(daemon_id)
            os.makedirs(os.path.dirname(config_path), exist_ok=True)
            with open(config_path, "w", encoding="utf-8") as file:
                json.dump(self.nydusd_config(image_ref), file, indent=2)
            record = self.daemons.start(daemon_id, "dedicated", bootstrap, config_path)
        self.store.put_image(ImageRecord(meta.id, daemon_id, image_ref, record.mountpoint))
        return record.mountpoint

    def _shared_daemon(self) -> DaemonRecord:
        record = self.store.daemon(SHARED_DAEMON_ID)
        if record is not None and self.daemons.is_running(record):
            return record
        if record is not None:
            self._may_restart(record)
            log.warning("the shared nydusd is not running: starting it again on the same cache")
            self.daemons.stop(record)
        return self.daemons.start(SHARED_DAEMON_ID, "shared")

    def _serve_shared(self, meta: Snapshot, image_ref: str, bootstrap: str) -> str:
        record = self._shared_daemon()
        sub = f"/{meta.id}"
        if sub not in self.daemons.mounted(record):
            self.daemons.mount_image(record, sub, bootstrap, json.dumps(self.nydusd_config(image_ref)))
        path = record.mountpoint + sub
        self.store.put_image(ImageRecord(meta.id, SHARED_DAEMON_ID, image_ref, path))
        return path

    def release(self, snapshot_id: int) -> None:
        """The image of bootstrap snapshot `snapshot_id` is no longer needed: stop or unmount it."""
        image = self.store.image(snapshot_id)
        if image is None:
            return
        record = self.store.daemon(image.daemon_id)
        if record is not None:
            if record.mode == "shared":
                if self.daemons.is_running(record):
                    self.daemons.umount_image(record, f"/{snapshot_id}")
            else:
                self.daemons.stop(record)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.layout.config_path(record.daemon_id))
        self.store.delete_image(snapshot_id)
        log.info("released the image of snapshot %d (%s)", snapshot_id, image.image_ref)

    def stop_idle_shared(self) -> None:
        """Stop the shared daemon once no image uses it."""
        record = self.store.daemon(SHARED_DAEMON_ID)
        if record is not None and not any(image.daemon_id == SHARED_DAEMON_ID for image in self.store.images()):
            self.daemons.stop(record)

    def recover(self) -> None:
        """At start: reattach to the daemons still running, forget the records of dead ones."""
        for record in self.store.daemons():
            if self.daemons.is_running(record):
                log.info("reattached to %s (pid %d) at %s", record.daemon_id, record.pid, record.api_sock)
                self.daemons.watch(record)
            else:
                log.warning("%s (pid %d) died while the snapshotter was away: it is started again when needed",
                            record.daemon_id, record.pid)  # fmt: skip
                self.daemons.events.add("DIED")

    def blobs_in_use(self, metas: list[Snapshot]) -> set[str] | None:
        """Blob ids the bootstraps of `metas` refer to; None when one cannot be read (keep everything)."""
        blob_ids: set[str] = set()
        for meta in metas:
            path = self.bootstrap_path(meta)
            if not os.path.exists(path):
                continue
            try:
                bootstrap = open_bootstrap(path)
            except (NydusError, OSError) as error:
                log.warning("cache GC skipped: cannot read %s: %s", path, error)
                return None
            blob_ids.update(blob.blob_id for blob in bootstrap.blobs)
        return blob_ids
