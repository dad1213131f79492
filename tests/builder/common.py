"""Helpers shared by the builder tests: write a stack of layers, build it, unpack it."""

from __future__ import annotations

import os

from builder.build import BuildOptions, BuildResult, build
from builder.unpack import unpack_to_directory, unpack_to_tar
from rafs.mapped import open_bootstrap
from tests.reference import Entry, Snapshot, snapshot_directory, snapshot_tar, write_layer


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
    """An OCI image layout (oci-layout, index.json, blobs/sha256) holding the given tar layers."""
    import hashlib
    import json
    import shutil

    blobs = os.path.join(directory, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as file:
            file.write(data)
        return "sha256:" + digest

    layers = []
    for path in layer_paths:
        with open(path, "rb") as file:
            digest = hashlib.sha256(file.read()).hexdigest()
        shutil.copyfile(path, os.path.join(blobs, digest))
        media = "application/vnd.oci.image.layer.v1.tar" + (".gzip" if path.endswith(".gz") else "")
        layers.append({"mediaType": media, "digest": "sha256:" + digest, "size": os.path.getsize(path)})
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config), "size": len(config)},
        "layers": layers,
    }
    manifest_bytes = json.dumps(manifest).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": put(manifest_bytes),
                "size": len(manifest_bytes),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    with open(os.path.join(directory, "index.json"), "w") as file:
        json.dump(index, file)
    with open(os.path.join(directory, "oci-layout"), "w") as file:
        json.dump({"imageLayoutVersion": "1.0.0"}, file)
    return directory
