"""Helpers shared by the builder tests: write a stack of layers, build it, unpack it."""

from __future__ import annotations

import gzip
import os

from builder.build import BuildOptions, BuildResult, build
from builder.unpack import unpack_to_directory, unpack_to_tar
from rafs.mapped import open_bootstrap
from rafs.oci import sha256_digest
from tests.reference import Entry, Snapshot, snapshot_directory, snapshot_tar, write_layer
from tests.registry import images as registry_images


def write_layers(directory: str, layers: list[list[Entry]], compressions: list[str] | None = None) -> list[str]:
    """Each layer as `layerN.tar[.gz|.zst]` under `directory`, lowest first."""
    paths = []
    for number, layer in enumerate(layers):
        compression = compressions[number % len(compressions)] if compressions else "gzip"
        suffix = {"gzip": ".tar.gz", "zstd": ".tar.zst", "none": ".tar"}[compression]
        paths.append(write_layer(os.path.join(directory, f"layer{number}{suffix}"), layer, compression))
    return paths


def build_layers(
    directory: str, layer_paths: list[str], options: BuildOptions | None = None, name: str = "image"
) -> tuple[str, str, BuildResult]:
    """Build `layer_paths` into `directory/name.boot` and `directory/name-blobs/`."""
    bootstrap = os.path.join(directory, f"{name}.boot")
    blob_dir = os.path.join(directory, f"{name}-blobs")
    result = build("targz", layer_paths, bootstrap, blob_dir, options)
    return bootstrap, blob_dir, result


def unpacked(directory: str, bootstrap_path: str, blob_dir: str) -> tuple[Snapshot, Snapshot]:
    """Snapshots of the image unpacked to a directory and to a tar file."""
    bootstrap = open_bootstrap(bootstrap_path)
    output = os.path.join(directory, "unpacked")
    unpack_to_directory(bootstrap, blob_dir, output)
    tar_path = os.path.join(directory, "unpacked.tar")
    unpack_to_tar(bootstrap, blob_dir, tar_path)
    return snapshot_directory(output), snapshot_tar(tar_path)


def write_oci_layout(directory: str, layer_paths: list[str], tag: str = "latest") -> str:
    """An OCI image layout holding the given tar layers (`tests.registry.images` writes it)."""
    made = []
    for path in layer_paths:
        with open(path, "rb") as file:
            layer = file.read()
        made.append((layer, sha256_digest(gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer)))
    registry_images.write_oci_layout(directory, registry_images.image_of_layers(made), tag)
    return directory
