"""Fetch a converted image's bootstrap from a registry for `nydusd --image`.

The manifest is read by `rafs.oci.parse_converted_manifest`, the rules `nydusify check` applies
too; its last layer is a tar.gz holding `image/image.boot` (and, from `nydusify convert --erofs`,
`image/image.erofs`). The layer is streamed to `work_dir/bootstraps/<digest>.tar.gz` (verified
against its digest by the client, at most `bootstrap_size_limit` bytes) and kept there, so a
restart or a second mount of the same image downloads no more than the manifest.

The first use of a kept layer checks its sha256 against the manifest's digest while its members
are streamed out into `<digest>.boot` (and `<digest>.erofs`), each replacing the previous copy
only if both hold, then records the blake3 of what it extracted in `<digest>.kept`. A later use
checks the extracted files against that record (a few ms for debian-sci's 13 MB) instead of
reading the layer again (0.1 s: sha256, gunzip and a compare); where they differ, or the record
is missing, the layer is extracted again, and a kept layer that fails its digest is fetched
again. Nothing is ever decompressed whole in memory, and no more than the size limit is
decompressed at all, so a gzip bomb costs a few MiB of memory and leaves nothing behind.

The blob layers' digests must equal the bootstrap's blob table, in order
(`ConvertedImage.check_blob_table`). Synchronous; no event loop here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import IO, cast

import blake3

from daemon.storage.registry import RegistryClient
from rafs import oci
from rafs.errors import ImageError
from rafs.mapped import open_bootstrap
from rafs.oci import ImageReference, layer_limit
from rafs.outputs import atomic_file

log = logging.getLogger(__name__)

BOOTSTRAP_DIR = "bootstraps"
PIECE_BYTES = 1 << 20
RECORD_VERSION = 1


class _Hashing:
    """A binary reader that hashes what passes through it (the kept layer against its digest)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.sha256.update(data)
        return data


def _extract(ref: ImageReference, layer_path: str, boot_path: str, digest: str, limit: int) -> int:
    """Check the kept layer against `digest` while streaming its bootstrap to `boot_path`; its size.

    In one pass: the layer's bytes are hashed as gzip reads them (and to the end of the file),
    `image/image.boot` is compared with the kept `boot_path` (or copied to a temporary file where
    it differs), and only when the digest and the tar hold is the copy renamed over `boot_path`.
    Anything else raises `ImageError` and leaves no new file; `boot_path` is only ever used after
    this returned."""
    temporary = f"{boot_path}.tmp-{os.getpid()}"
    erofs_path = shipped_erofs_path(boot_path)
    erofs_temporary = f"{erofs_path}.tmp-{os.getpid()}"
    erofs_rewrite = False

    def keep_erofs(stream: IO[bytes]) -> None:
        nonlocal erofs_rewrite
        erofs_rewrite = _copy_unless_same(stream, erofs_path, erofs_temporary)

    try:
        with open(layer_path, "rb") as raw:
            hashing = _Hashing(raw)
            with oci.bootstrap_in_layer(cast(IO[bytes], hashing), limit, str(ref), keep_erofs) as unpacked:
                rewrite = _copy_unless_same(unpacked.stream, boot_path, temporary)
            while hashing.read(PIECE_BYTES):
                pass  # the digest covers bytes after the gzip stream too
        found = "sha256:" + hashing.sha256.hexdigest()
        if found != digest:
            raise ImageError(f"{ref}: bootstrap layer {layer_path} has digest {found}, the manifest says {digest}")
        if rewrite:
            os.replace(temporary, boot_path)
        if erofs_rewrite:
            os.replace(erofs_temporary, erofs_path)
        return unpacked.size
    finally:
        for path in (temporary, erofs_temporary):
            if os.path.exists(path):
                os.unlink(path)


def _file_blake3(path: str) -> str | None:
    """The blake3 (hex) of the file at `path`, or None if there is none."""
    hasher = blake3.blake3()
    try:
        with open(path, "rb") as file:
            while piece := file.read(PIECE_BYTES * 8):
                hasher.update(piece)
    except FileNotFoundError:
        return None
    return hasher.hexdigest()


def _record_path(boot_path: str) -> str:
    return boot_path.removesuffix(".boot") + ".kept"


def _extracted(boot_path: str) -> dict[str, object]:
    """What the record says of the files extracted for `boot_path`: their blake3, None if absent."""
    return {
        "version": RECORD_VERSION,
        "boot": _file_blake3(boot_path),
        "erofs": _file_blake3(shipped_erofs_path(boot_path)),
    }


def _write_record(boot_path: str) -> None:
    """Record the blake3 of the files just extracted (and checked) for `boot_path`. Without the
    record (a full disk), the next start only extracts them again."""
    try:
        with atomic_file(_record_path(boot_path)) as file:
            file.write(json.dumps(_extracted(boot_path)).encode())
    except OSError as error:
        log.warning("cannot record the extracted bootstrap %s: %s", boot_path, error.strerror)


def _kept_copies_hold(boot_path: str) -> bool:
    """Whether the files extracted for `boot_path` are still what was recorded when they were."""
    try:
        with open(_record_path(boot_path), "rb") as file:
            recorded = json.loads(file.read())
        return isinstance(recorded, dict) and recorded.get("boot") is not None and recorded == _extracted(boot_path)
    except (OSError, ValueError):
        return False


def shipped_erofs_path(boot_path: str) -> str:
    """Where the EROFS metadata that came in the layer with the bootstrap `boot_path` is kept."""
    return boot_path.removesuffix(".boot") + ".erofs"


def _copy_unless_same(source: IO[bytes], boot_path: str, temporary: str) -> bool:
    """Compare `source` with the kept `boot_path`; where they differ, write all of `source` to
    `temporary` (fsynced) and return True. A warm start thus reads the kept copy, not writes it."""
    kept = open(boot_path, "rb") if os.path.exists(boot_path) else None  # noqa: SIM115 - closed below
    output: IO[bytes] | None = None
    agreed = 0  # bytes of `source` equal to the kept copy so far
    try:
        while piece := source.read(PIECE_BYTES):
            if output is None and kept is not None and kept.read(len(piece)) == piece:
                agreed += len(piece)
                continue
            if output is None:
                output = open(temporary, "wb")  # noqa: SIM115 - closed below
                if kept is not None:
                    kept.seek(0)
                    while agreed:
                        agreed -= output.write(kept.read(min(PIECE_BYTES, agreed)))
            output.write(piece)
        if output is None and kept is not None and not kept.read(1):
            return False  # the kept copy is exactly the layer's bootstrap
        if output is None:  # the kept copy is longer (or missing): write what was compared
            output = open(temporary, "wb")  # noqa: SIM115 - closed below
            if kept is not None:
                kept.seek(0)
                while agreed:
                    agreed -= output.write(kept.read(min(PIECE_BYTES, agreed)))
        output.flush()
        os.fsync(output.fileno())
        return True
    finally:
        if kept is not None:
            kept.close()
        if output is not None:
            output.close()


def fetch_bootstrap(client: RegistryClient, ref: ImageReference, work_dir: str) -> str:
    """The local path of `ref`'s bootstrap, checked against the manifest's digest on every call.

    The layer is downloaded unless a kept copy in `work_dir` passes that check; one that fails
    is fetched again."""
    manifest = client.get_image_manifest(ref)
    image = oci.parse_converted_manifest(manifest.document, str(ref))
    boot_digest = image.bootstrap_digest
    limit = client.options.bootstrap_size_limit
    directory = os.path.join(work_dir, BOOTSTRAP_DIR)
    name = boot_digest.replace(":", "-")
    layer_path, path = os.path.join(directory, name + ".tar.gz"), os.path.join(directory, name + ".boot")
    size = -1
    if _kept_copies_hold(path):
        size = os.path.getsize(path)
        log.info("bootstrap of %s (%s) already in %s, as recorded when extracted", ref, boot_digest, directory)
    elif os.path.exists(layer_path):
        try:
            size = _extract(ref, layer_path, path, boot_digest, limit)
            log.info("bootstrap of %s (%s) already in %s, verified against its digest", ref, boot_digest, directory)
        except ImageError as error:
            log.warning("kept bootstrap layer fails (%s): fetching it again", error)
            os.unlink(layer_path)
        else:
            _write_record(path)
    if size < 0:
        os.makedirs(directory, exist_ok=True)
        client.download_blob(ref, boot_digest, layer_path, max_bytes=layer_limit(limit))
        try:
            size = _extract(ref, layer_path, path, boot_digest, limit)
        except ImageError:
            os.unlink(layer_path)  # a layer we cannot use is not kept
            raise
        _write_record(path)
        log.info("bootstrap of %s (%s, %d bytes) saved in %s", ref, boot_digest, size, directory)
    image.check_blob_table([blob.blob_id for blob in open_bootstrap(path).blobs], str(ref))
    return path
