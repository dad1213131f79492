"""`read_layout`: the one reader of an OCI image layout (`index.json`, `blobs/<alg>/<hex>`).

`nydus-image create --source-type oci DIR[:tag]` and `nydusify convert --source oci:DIR[:tag]`
both read a layout here, with the same platform rule (`rafs.oci.select_manifest` over the
platforms asked for, the host's by default), so the config and the layers always come from
the same manifest. Every JSON blob is checked against its digest before it is parsed; layer
blobs are checked as they are built (`builder.build`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from rafs import oci
from rafs.errors import BuildError
from rafs.oci import Platform

MAX_JSON_BYTES = 4 << 20  # an index, manifest or config; containerd's manifest cap


@dataclass(frozen=True)
class LayoutLayer:
    """A layer blob in a layout: where it is, and the digest its manifest promises."""

    path: str
    digest: str
    media_type: str


@dataclass(frozen=True)
class LayoutImage:
    """One image of a layout: its manifest's digest, its config and its layers, lowest first."""

    manifest_digest: str
    config: dict[str, object]
    layers: tuple[LayoutLayer, ...]


def split_reference(reference: str) -> tuple[str, str]:
    """`DIR[:tag]` -> (DIR, tag); an empty tag means the layout's first image."""
    directory, _, tag = reference.partition(":")
    return directory, tag


def _blob_path(directory: str, digest: str) -> str:
    if not oci.is_digest(digest) or not digest.startswith("sha256:"):
        raise BuildError(f"OCI layout {directory}: unsupported or malformed digest {digest!r}")
    return os.path.join(directory, "blobs", "sha256", digest[len("sha256:") :])


def _json_blob(directory: str, digest: str) -> dict[str, object]:
    path = _blob_path(directory, digest)
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_JSON_BYTES + 1)
    except OSError as error:
        raise BuildError(f"OCI layout {directory}: blob {digest}: {error.strerror}") from None
    if len(data) > MAX_JSON_BYTES:
        raise BuildError(f"OCI layout {directory}: blob {digest} is larger than {MAX_JSON_BYTES} bytes")
    if oci.sha256_digest(data) != digest:
        raise BuildError(f"OCI layout {directory}: blob {digest} does not match its digest")
    try:
        document = json.loads(data)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise BuildError(f"OCI layout {directory}: blob {digest} is not a JSON object")
    return document


def _digest_of(directory: str, descriptor: object, what: str) -> str:
    if not isinstance(descriptor, dict) or not isinstance(descriptor.get("digest"), str):
        raise BuildError(f"OCI layout {directory}: malformed {what} descriptor {descriptor!r}")
    return str(descriptor["digest"])


def _tagged(directory: str, tag: str) -> str:
    """The digest of the index entry tagged `tag` (the first entry when `tag` is empty)."""
    try:
        with open(os.path.join(directory, "index.json"), "rb") as file:
            index = json.loads(file.read(MAX_JSON_BYTES + 1))
    except OSError as error:
        raise BuildError(f"OCI layout {directory}: index.json: {error.strerror}") from None
    except ValueError as error:
        raise BuildError(f"OCI layout {directory}: index.json is not JSON: {error}") from None
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list):
        raise BuildError(f"OCI layout {directory}: index.json has no manifests list")
    for descriptor in manifests:
        annotations = descriptor.get("annotations") if isinstance(descriptor, dict) else None
        name = annotations.get(oci.ANNOTATION_REF_NAME) if isinstance(annotations, dict) else None
        if not tag or name == tag:
            return _digest_of(directory, descriptor, "index")
    raise BuildError(f"OCI layout {directory}: no image tagged {tag!r}")


def read_layout(directory: str, tag: str, platforms: Sequence[Platform]) -> LayoutImage:
    """The image tagged `tag` in the layout at `directory`; from an index, the first of `platforms`."""
    if not os.path.isdir(directory):
        raise BuildError(f"OCI layout {directory} is not a directory")
    digest = _tagged(directory, tag)
    manifest = _json_blob(directory, digest)
    if "manifests" in manifest:
        try:
            chosen = oci.select_manifest(manifest, platforms)
        except oci.InvalidReference as error:
            raise BuildError(f"OCI layout {directory}: {error}") from None
        digest = _digest_of(directory, chosen, "platform manifest")
        manifest = _json_blob(directory, digest)
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise BuildError(f"OCI layout {directory}: manifest {digest} has no layers list")
    result = []
    for layer in layers:
        layer_digest = _digest_of(directory, layer, "layer")
        media_type = layer.get("mediaType", "")
        if media_type == oci.NYDUS_BLOB:
            raise BuildError(f"OCI layout {directory}: already a converted image (it has nydus blob layers)")
        result.append(LayoutLayer(_blob_path(directory, layer_digest), layer_digest, str(media_type)))
    config = _json_blob(directory, _digest_of(directory, manifest.get("config"), "config"))
    return LayoutImage(digest, config, tuple(result))
