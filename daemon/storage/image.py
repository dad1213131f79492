"""Fetch a converted image's bootstrap from a registry for `nydusd --image`.

The manifest's layer annotated `containerd.io/snapshot/nydus-bootstrap` is a tar.gz holding
`image/image.boot`. The layer is streamed to `work_dir/bootstraps/<digest>.tar.gz` (verified
against its digest by the client, at most `bootstrap_size_limit` bytes) and kept there, so a
restart or a second mount of the same image downloads no more than the manifest. Every use
(the first and each later one) reads the kept layer once: its sha256 is checked against the
manifest's digest while `image/image.boot` is streamed out of it into `<digest>.boot`, which
replaces the previous copy only if both hold. A kept layer that fails is fetched again. Nothing
is ever decompressed whole in memory, and no more than the size limit is decompressed at all,
so a gzip bomb costs a few MiB of memory and leaves nothing behind.

The blob layers' digests must equal the bootstrap's blob table: blob ids are their sha256,
which is what the registry backend asks for. Synchronous; no event loop here.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tarfile
import zlib
from typing import IO, cast

from daemon.storage.registry import RegistryClient
from rafs import oci
from rafs.errors import NydusError
from rafs.mapped import open_bootstrap
from rafs.oci import ImageReference

log = logging.getLogger(__name__)

BOOTSTRAP_DIR = "bootstraps"
PIECE_BYTES = 1 << 20
# Tar headers and padding around the bootstrap: what a layer may hold beyond the bootstrap itself.
LAYER_OVERHEAD_BYTES = 1 << 20


class ImageError(NydusError):
    """The image is not one this daemon can mount (no bootstrap layer, other format, mismatch)."""

    exit_code = 7


class _Hashing:
    """A binary reader that hashes what passes through it (the kept layer against its digest)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.sha256.update(data)
        return data


class _Capped:
    """A reader that refuses to deliver more than `limit` bytes: what stops a gzip bomb."""

    def __init__(self, stream: IO[bytes], limit: int, ref: ImageReference) -> None:
        self.stream = stream
        self.limit = limit
        self.ref = ref
        self.delivered = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(min(size, self.limit + 1 - self.delivered) if size >= 0 else self.limit + 1)
        self.delivered += len(data)
        if self.delivered > self.limit:
            raise ImageError(f"{self.ref}: bootstrap layer expands beyond {self.limit} bytes (bootstrap_size_limit)")
        return data


def _bootstrap_layer(ref: ImageReference, document: dict[str, object]) -> tuple[str, list[str]]:
    """The bootstrap layer's digest and the blob layers' digests, in manifest order."""
    layers = document.get("layers")
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise ImageError(f"{ref}: manifest has no layers list")
    boots = [
        layer
        for layer in layers
        if isinstance(layer.get("annotations"), dict)
        and layer["annotations"].get(oci.ANNOTATION_NYDUS_BOOTSTRAP) == "true"
    ]
    if len(boots) != 1:
        raise ImageError(f"{ref}: expected one layer annotated {oci.ANNOTATION_NYDUS_BOOTSTRAP}, found {len(boots)}")
    version = boots[0]["annotations"].get(oci.ANNOTATION_NYDUS_FS_VERSION)
    if version != oci.FS_VERSION:
        raise ImageError(f"{ref}: bootstrap is of format {version!r}, this daemon reads {oci.FS_VERSION!r}")
    blobs = [str(layer.get("digest")) for layer in layers if layer.get("mediaType") == oci.NYDUS_BLOB]
    return str(boots[0].get("digest")), blobs


def _extract(ref: ImageReference, layer_path: str, boot_path: str, digest: str, limit: int) -> int:
    """Check the kept layer against `digest` while streaming its bootstrap to `boot_path`; its size.

    In one pass: the layer's bytes are hashed as gzip reads them (and to the end of the file),
    `image/image.boot` is compared with the kept `boot_path` (or copied to a temporary file where
    it differs), and only when the digest and the tar hold is the copy renamed over `boot_path`.
    Anything else raises `ImageError` and leaves no new file; `boot_path` is only ever used after
    this returned."""
    temporary = f"{boot_path}.tmp-{os.getpid()}"
    size = -1
    rewrite = True
    try:
        with open(layer_path, "rb") as raw:
            hashing = _Hashing(raw)
            decompressed = gzip.GzipFile(fileobj=cast(IO[bytes], hashing), mode="rb")
            unpacked = _Capped(cast(IO[bytes], decompressed), limit + LAYER_OVERHEAD_BYTES, ref)
            with tarfile.open(fileobj=cast(IO[bytes], unpacked), mode="r|") as tar:
                for member in tar:
                    if member.name.removeprefix("./") != oci.BOOTSTRAP_PATH_IN_LAYER or not member.isreg():
                        continue
                    if member.size > limit:
                        raise ImageError(
                            f"{ref}: bootstrap of {member.size} bytes is larger than {limit} (bootstrap_size_limit)"
                        )
                    source = tar.extractfile(member)
                    assert source is not None
                    rewrite = _copy_unless_same(source, boot_path, temporary)
                    size = member.size
            while hashing.read(PIECE_BYTES):
                pass  # the digest covers bytes after the gzip stream too
        found = "sha256:" + hashing.sha256.hexdigest()
        if found != digest:
            raise ImageError(f"{ref}: bootstrap layer {layer_path} has digest {found}, the manifest says {digest}")
        if size < 0:
            raise ImageError(f"{ref}: bootstrap layer holds no {oci.BOOTSTRAP_PATH_IN_LAYER}")
        if rewrite:
            os.replace(temporary, boot_path)
        return size
    except (OSError, EOFError, zlib.error, tarfile.TarError) as error:
        raise ImageError(f"{ref}: bootstrap layer is not a readable tar.gz: {error}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


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
    boot_digest, blob_digests = _bootstrap_layer(ref, manifest.document)
    if not oci.is_digest(boot_digest):
        raise ImageError(f"{ref}: bootstrap layer has a malformed digest {boot_digest!r}")
    limit = client.options.bootstrap_size_limit
    directory = os.path.join(work_dir, BOOTSTRAP_DIR)
    name = boot_digest.replace(":", "-")
    layer_path, path = os.path.join(directory, name + ".tar.gz"), os.path.join(directory, name + ".boot")
    size = -1
    if os.path.exists(layer_path):
        try:
            size = _extract(ref, layer_path, path, boot_digest, limit)
            log.info("bootstrap of %s (%s) already in %s, verified against its digest", ref, boot_digest, directory)
        except ImageError as error:
            log.warning("kept bootstrap layer fails (%s): fetching it again", error)
            os.unlink(layer_path)
    if size < 0:
        os.makedirs(directory, exist_ok=True)
        client.download_blob(ref, boot_digest, layer_path, max_bytes=limit + LAYER_OVERHEAD_BYTES)
        try:
            size = _extract(ref, layer_path, path, boot_digest, limit)
        except ImageError:
            os.unlink(layer_path)  # a layer we cannot use is not kept
            raise
        log.info("bootstrap of %s (%s, %d bytes) saved in %s", ref, boot_digest, size, directory)
    blob_ids = [f"sha256:{blob.blob_id}" for blob in open_bootstrap(path).blobs]
    missing = set(blob_ids) - set(blob_digests)
    if missing:
        raise ImageError(f"{ref}: blob {min(missing)} of the bootstrap is not a layer of the manifest")
    return path
