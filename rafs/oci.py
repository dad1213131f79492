"""OCI vocabulary shared by the builder and the daemon: media types, annotations, image references.

Pure data and parsing, no I/O: the registry client (`daemon.storage.registry`) and `nydusify`
both speak these names, so they are defined once here. The Nydus annotation keys are Nydus's own
(so tools that look for them find a Nydus-style image), but `FS_VERSION` names this project's
format: it is never "5" or "6", which belong to Nydus's RAFS and would make a real nydusd try to
mount bytes it cannot read.
"""

from __future__ import annotations

import hashlib
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rafs.errors import NydusError

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

DEFAULT_TAG = "latest"
DOCKER_HUB = "docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)


class InvalidReference(NydusError):
    """An image reference or digest that does not parse."""

    exit_code = 2


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
