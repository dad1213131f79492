"""OCI conventions shared by the builder and the daemon: media types, annotations, image references,
platforms, digests, and the converted-image artifact (its manifest, config and bootstrap layer).

Pure: bytes, streams and dicts in and out, no files or network. The registry client
(`daemon.storage.registry`), `nydusd --image`, `nydusify` and the benchmarks all speak these
names and follow these rules, so they are defined once here. The Nydus annotation keys are Nydus's own
(so tools that look for them find a Nydus-style image), but `FS_VERSION` names this project's
format: it is never "5" or "6", which belong to Nydus's RAFS and would make a real nydusd try to
mount bytes it cannot read.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, cast

from rafs.errors import ConfigError, ImageError

# Manifests and indexes.
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)

# Configs and layers.
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
LAYER_TYPES = (OCI_LAYER_TAR, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_GZIP)
NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"

# Annotations.
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_NYDUS_BLOB = "containerd.io/snapshot/nydus-blob"
ANNOTATION_NYDUS_BOOTSTRAP = "containerd.io/snapshot/nydus-bootstrap"
ANNOTATION_NYDUS_FS_VERSION = "containerd.io/snapshot/nydus-fs-version"
FS_VERSION = "pyrafs-1"
BOOTSTRAP_PATH_IN_LAYER = "image/image.boot"
# Optional, after the bootstrap: its EROFS metadata (`rafs.erofs`), for nydusd's EROFS driver.
EROFS_PATH_IN_LAYER = "image/image.erofs"

DEFAULT_TAG = "latest"
DOCKER_HUB = "docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)


class InvalidReference(ConfigError):
    """An image reference or digest that does not parse."""


def is_digest(text: str) -> bool:
    """Whether `text` is a digest this project can verify (sha256 or sha512, lowercase hex)."""
    return _DIGEST_RE.fullmatch(text) is not None


@dataclass(frozen=True)
class ImageReference:
    """`host[:port]/repo[:tag][@digest]`; a digest, when given, is what is fetched."""

    registry: str
    repository: str
    tag: str = DEFAULT_TAG
    digest: str = ""

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Parse a reference; a first component without `.`, `:` or `localhost` means Docker Hub."""
        rest, has_digest, digest = text.partition("@")
        if has_digest and not is_digest(digest):
            raise InvalidReference(f"image reference {text!r}: malformed digest {digest!r}")
        head, slash, tail = rest.partition("/")
        if slash and (head == "localhost" or "." in head or ":" in head or head.startswith("[")):
            if not _HOST_RE.fullmatch(head):
                raise InvalidReference(f"image reference {text!r}: malformed registry host {head!r}")
            registry, path = head, tail
        else:
            registry, path = DOCKER_HUB, rest
            if "/" not in path:
                path = "library/" + path
        repository, has_tag, tag = path.rpartition(":") if ":" in path else (path, "", "")
        if not has_tag:
            tag = DEFAULT_TAG
        elif not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"image reference {text!r}: malformed tag {tag!r}")
        if not _REPOSITORY_RE.fullmatch(repository):
            raise InvalidReference(f"image reference {text!r}: malformed repository {repository!r}")
        return cls(registry, repository, tag, digest)

    @property
    def reference(self) -> str:
        """What goes after `/manifests/`: the digest if pinned, else the tag."""
        return self.digest or self.tag

    @property
    def host(self) -> str:
        """The registry host without its port (brackets removed for IPv6)."""
        if self.registry.startswith("["):
            return self.registry[1 : self.registry.index("]")]
        return self.registry.rsplit(":", 1)[0]

    def with_digest(self, digest: str) -> ImageReference:
        return ImageReference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}:{self.tag}"
        return f"{text}@{self.digest}" if self.digest else text


@dataclass(frozen=True)
class Platform:
    """The platform an image index entry is for; `variant` is empty when not given."""

    os: str
    architecture: str
    variant: str = ""


def select_manifest(index: Mapping[str, object], wanted: Sequence[Platform]) -> dict[str, object]:
    """The descriptor in `index` for the first of `wanted` platforms it has.

    Entries without a platform (attestations have `unknown/unknown`) never match, so an index
    that holds no wanted platform is an error rather than a silent pick of the wrong one.
    """
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise InvalidReference("image index has no manifests list")
    for choice in wanted:
        for descriptor in manifests:
            if not isinstance(descriptor, dict):
                continue
            offered = descriptor.get("platform")
            if not isinstance(offered, dict):
                continue
            same_variant = not choice.variant or offered.get("variant", choice.variant) == choice.variant
            if offered.get("os") == choice.os and offered.get("architecture") == choice.architecture and same_variant:
                return descriptor
    names = ", ".join(f"{p.os}/{p.architecture}" for p in wanted)
    raise InvalidReference(f"image index has no manifest for {names}")


def host_platforms() -> tuple[Platform, ...]:
    """The host's platform first, then linux/amd64 (what most single-platform images are)."""
    machine = platform.machine().lower()
    architecture = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)
    wanted = [Platform("linux", architecture)]
    if architecture != "amd64":
        wanted.append(Platform("linux", "amd64"))
    return tuple(wanted)


def sha256_digest(data: bytes) -> str:
    """The OCI digest (`sha256:<hex>`) of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---- the converted image: what `nydusify convert` pushes and every reader accepts

TAR_MTIME = 0  # the bootstrap layer's tar and gzip carry no clock, for reproducible digests


@dataclass(frozen=True)
class ConvertedImage:
    """What a converted manifest promises: the blob layers in the bootstrap's blob-table order,
    then the bootstrap layer, and a config."""

    blob_digests: tuple[str, ...]
    blob_sizes: tuple[int, ...]
    bootstrap_digest: str
    bootstrap_size: int
    config_digest: str

    def check_blob_table(self, blob_ids: Sequence[str], where: str) -> None:
        """The bootstrap's blob table must name exactly the blob layers, in order: blob ids are
        the layers' sha256, which is what the registry backend asks for."""
        if tuple(f"sha256:{blob_id}" for blob_id in blob_ids) != self.blob_digests:
            raise ImageError(f"{where}: the blob layers differ from the bootstrap's blob table")


def _descriptor(value: object, where: str, what: str) -> tuple[str, int, Mapping[str, object]]:
    """(digest, size, annotations) of a descriptor, each checked."""
    if not isinstance(value, dict):
        raise ImageError(f"{where}: {what} is not a descriptor")
    digest, size, annotations = value.get("digest"), value.get("size", 0), value.get("annotations", {})
    if not isinstance(digest, str) or not is_digest(digest):
        raise ImageError(f"{where}: {what} has a malformed digest {digest!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ImageError(f"{where}: {what} has a malformed size {size!r}")
    if not isinstance(annotations, dict):
        raise ImageError(f"{where}: {what} has malformed annotations")
    return digest, size, annotations


def parse_converted_manifest(document: Mapping[str, object], where: str) -> ConvertedImage:
    """The one reading of a converted image's manifest, for `nydusd --image`, `nydusify check`
    and the benchmarks alike; `ImageError` for anything else. `where` names the image."""
    layers = document.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ImageError(f"{where}: manifest has no layers")
    *blob_layers, boot_layer = layers
    boot_digest, boot_size, annotations = _descriptor(boot_layer, where, "the last layer")
    if annotations.get(ANNOTATION_NYDUS_BOOTSTRAP) != "true":
        raise ImageError(f"{where}: the last layer is not annotated {ANNOTATION_NYDUS_BOOTSTRAP}")
    version = annotations.get(ANNOTATION_NYDUS_FS_VERSION)
    if version != FS_VERSION:
        raise ImageError(f"{where}: bootstrap is of format {version!r}, this project reads {FS_VERSION!r}")
    blob_digests, blob_sizes = [], []
    for position, layer in enumerate(blob_layers):
        digest, size, layer_annotations = _descriptor(layer, where, f"layer {position}")
        if not isinstance(layer, dict) or layer.get("mediaType") != NYDUS_BLOB:
            raise ImageError(f"{where}: layer {digest} is not a nydus blob")
        if layer_annotations.get(ANNOTATION_NYDUS_BLOB) != "true":
            raise ImageError(f"{where}: layer {digest} lacks {ANNOTATION_NYDUS_BLOB}")
        blob_digests.append(digest)
        blob_sizes.append(size)
    config_digest, _size, _annotations = _descriptor(document.get("config"), where, "config")
    return ConvertedImage(tuple(blob_digests), tuple(blob_sizes), boot_digest, boot_size, config_digest)


def pack_bootstrap_layer(bootstrap: bytes, erofs: bytes | None = None) -> tuple[bytes, str]:
    """The bootstrap as a tar.gz holding `image/image.boot` (then, if given, its EROFS metadata
    as `image/image.erofs`), and its diff_id; reproducible."""
    import gzip  # here, not at the top: a daemon mounting a local bootstrap never needs them
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((BOOTSTRAP_PATH_IN_LAYER, bootstrap), (EROFS_PATH_IN_LAYER, erofs)):
            if data is None:
                continue
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, TAR_MTIME
            tar.addfile(info, io.BytesIO(data))
    uncompressed = raw.getvalue()
    return gzip.compress(uncompressed, compresslevel=9, mtime=TAR_MTIME), sha256_digest(uncompressed)


class _Capped:
    """A reader that refuses to deliver more than `limit` bytes (what stops a gzip bomb), and
    hashes what it delivers (the layer's diff_id)."""

    def __init__(self, stream: IO[bytes], limit: int, where: str) -> None:
        self.stream = stream
        self.limit = limit
        self.where = where
        self.delivered = 0
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        wanted = min(size, self.limit + 1 - self.delivered) if size >= 0 else self.limit + 1
        data = self.stream.read(wanted)
        self.delivered += len(data)
        if self.delivered > self.limit:
            raise ImageError(f"{self.where}: bootstrap layer expands beyond {self.limit} bytes (bootstrap_size_limit)")
        self.sha256.update(data)
        return data


# Tar headers and padding around the bootstrap: what a layer may hold beyond the bootstrap itself.
LAYER_OVERHEAD_BYTES = 1 << 20


def layer_limit(bootstrap_limit: int) -> int:
    """The most bytes a bootstrap layer may take (compressed, or unpacked): the bootstrap and its
    EROFS metadata, each at most `bootstrap_limit`, and the tar's overhead."""
    return 2 * bootstrap_limit + LAYER_OVERHEAD_BYTES


_PIECE_BYTES = 1 << 20


class UnpackedBootstrap:
    """The bootstrap inside a layer: `stream` and `size` to read it, and once the layer has been
    read to its end (after the `with` block), the layer's `diff_id`."""

    def __init__(self, stream: IO[bytes], size: int) -> None:
        self.stream = stream
        self.size = size
        self.diff_id = ""


@contextmanager
def bootstrap_in_layer(
    layer: IO[bytes], limit: int, where: str, erofs_sink: Callable[[IO[bytes]], None] | None = None
) -> Iterator[UnpackedBootstrap]:
    """The bootstrap inside a bootstrap layer (a tar.gz) read from `layer`.

    Streamed: nothing is decompressed whole in memory, and no more than `layer_limit(limit)`
    is decompressed at all. The layer is read to its end after the caller is done, so a digest
    computed by `layer` covers every byte; on the way, EROFS metadata after the bootstrap is
    handed to `erofs_sink` (a stream to read). Anything unreadable, or a bootstrap or metadata
    larger than `limit`, is `ImageError`.
    """
    import gzip  # see pack_bootstrap_layer
    import tarfile

    found: UnpackedBootstrap | None = None
    try:
        decompressed = cast(IO[bytes], gzip.GzipFile(fileobj=layer, mode="rb"))
        unpacked = _Capped(decompressed, layer_limit(limit), where)
        with tarfile.open(fileobj=cast(IO[bytes], unpacked), mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if found and name == EROFS_PATH_IN_LAYER and member.isreg() and erofs_sink is not None:
                    if member.size > limit:
                        raise ImageError(f"{where}: EROFS metadata of {member.size} bytes is larger than {limit}")
                    metadata = tar.extractfile(member)
                    assert metadata is not None  # a regular file always has a stream
                    erofs_sink(metadata)
                    continue
                if found or name != BOOTSTRAP_PATH_IN_LAYER or not member.isreg():
                    continue
                if member.size > limit:
                    raise ImageError(
                        f"{where}: bootstrap of {member.size} bytes is larger than {limit} (bootstrap_size_limit)"
                    )
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has a stream
                found = UnpackedBootstrap(source, member.size)
                yield found
        while unpacked.read(_PIECE_BYTES):
            pass  # the tar's end padding belongs to the diff_id too
    except (gzip.BadGzipFile, EOFError, zlib.error, tarfile.TarError) as error:
        raise ImageError(f"{where}: bootstrap layer is not a readable tar.gz: {error}") from None
    if found is None:
        raise ImageError(f"{where}: bootstrap layer holds no {BOOTSTRAP_PATH_IN_LAYER}")
    found.diff_id = "sha256:" + unpacked.sha256.hexdigest()


def converted_config(source_config: Mapping[str, object], diff_ids: Sequence[str]) -> bytes:
    """The source config with `rootfs.diff_ids` for the new layers; its history no longer applies."""
    config = {key: value for key, value in source_config.items() if key != "history"}
    config["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def converted_manifest(config: bytes, blobs: Sequence[tuple[str, int]], bootstrap_layer: bytes) -> bytes:
    """The manifest: blob layers in the bootstrap's blob-table order, the bootstrap layer last."""
    layers: list[dict[str, object]] = [
        {
            "mediaType": NYDUS_BLOB,
            "digest": f"sha256:{blob_id}",
            "size": size,
            "annotations": {ANNOTATION_NYDUS_BLOB: "true"},
        }
        for blob_id, size in blobs
    ]
    layers.append(
        {
            "mediaType": OCI_LAYER_GZIP,
            "digest": sha256_digest(bootstrap_layer),
            "size": len(bootstrap_layer),
            "annotations": {ANNOTATION_NYDUS_BOOTSTRAP: "true", ANNOTATION_NYDUS_FS_VERSION: FS_VERSION},
        }
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": layers,
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
