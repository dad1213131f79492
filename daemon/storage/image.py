"""Fetch a converted image's bootstrap from a registry for `nydusd --image`.

The manifest's layer annotated `containerd.io/snapshot/nydus-bootstrap` is a tar.gz holding
`image/image.boot`. It is downloaded (verified against its digest by the client), unpacked and
kept under `work_dir/bootstraps/` named by the layer's digest, so a restart or a second mount of
the same image reads no more than the manifest. The blob layers' digests must equal the
bootstrap's blob table: blob ids are their sha256, which is what the registry backend asks for.
Synchronous; no event loop here.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import tarfile
import zlib

from daemon.storage.registry import RegistryClient
from rafs import oci
from rafs.errors import NydusError
from rafs.mapped import open_bootstrap
from rafs.oci import ImageReference

log = logging.getLogger(__name__)

BOOTSTRAP_DIR = "bootstraps"


class ImageError(NydusError):
    """The image is not one this daemon can mount (no bootstrap layer, other format, mismatch)."""

    exit_code = 7


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


def _unpack(ref: ImageReference, archive: bytes) -> bytes:
    """`image/image.boot` out of the bootstrap layer's tar.gz."""
    try:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as tar:
            member = tar.extractfile(oci.BOOTSTRAP_PATH_IN_LAYER)
            if member is None:
                raise KeyError(oci.BOOTSTRAP_PATH_IN_LAYER)
            return member.read()
    except KeyError:
        raise ImageError(f"{ref}: bootstrap layer holds no {oci.BOOTSTRAP_PATH_IN_LAYER}") from None
    except (OSError, EOFError, zlib.error, tarfile.TarError) as error:
        raise ImageError(f"{ref}: bootstrap layer is not a readable tar.gz: {error}") from None


def fetch_bootstrap(client: RegistryClient, ref: ImageReference, work_dir: str) -> str:
    """The local path of `ref`'s bootstrap, downloaded unless already kept in `work_dir`."""
    manifest = client.get_image_manifest(ref)
    boot_digest, blob_digests = _bootstrap_layer(ref, manifest.document)
    if not oci.is_digest(boot_digest):
        raise ImageError(f"{ref}: bootstrap layer has a malformed digest {boot_digest!r}")
    directory = os.path.join(work_dir, BOOTSTRAP_DIR)
    path = os.path.join(directory, boot_digest.replace(":", "-") + ".boot")
    if os.path.exists(path):
        log.info("bootstrap of %s (%s) already in %s", ref, boot_digest, directory)
    else:
        data = _unpack(ref, client.read_blob(ref, boot_digest))
        os.makedirs(directory, exist_ok=True)
        temporary = f"{path}.tmp-{os.getpid()}"
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        log.info("bootstrap of %s (%s, %d bytes) saved in %s", ref, boot_digest, len(data), directory)
    blob_ids = [f"sha256:{blob.blob_id}" for blob in open_bootstrap(path).blobs]
    missing = set(blob_ids) - set(blob_digests)
    if missing:
        raise ImageError(f"{ref}: blob {min(missing)} of the bootstrap is not a layer of the manifest")
    return path
