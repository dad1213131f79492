"""Small, deterministic OCI images built with `tarfile`, and a pusher written with our client."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
from dataclasses import dataclass

from daemon.storage.registry import RegistryClient
from rafs import oci
from rafs.oci import ImageReference, sha256_digest
from tests.reference import Entry, write_tar

# path -> bytes (file), None (directory), ("symlink", target), ("hardlink", target)
LayerSpec = dict[str, object]


MTIME_NS = 1_700_000_000 * 10**9


def make_layer(spec: LayerSpec) -> tuple[bytes, str]:
    """A gzip layer and its diff_id; the same spec always gives the same bytes (`tests.reference`
    writes the tar)."""
    entries = []
    for path in sorted(spec):
        value = spec[path]
        if value is None:
            entries.append(Entry(path, "dir", 0o755, mtime_ns=MTIME_NS))
        elif isinstance(value, tuple):
            kind, target = value
            entries.append(
                Entry(path, str(kind), 0o777 if kind == "symlink" else 0o644, mtime_ns=MTIME_NS, target=str(target))
            )
        else:
            assert isinstance(value, bytes)
            mode = 0o755 if path.startswith("bin/") else 0o644
            entries.append(Entry(path, "file", mode, mtime_ns=MTIME_NS, data=value))
    raw = io.BytesIO()
    write_tar(raw, entries)
    uncompressed = raw.getvalue()
    return gzip.compress(uncompressed, mtime=0), sha256_digest(uncompressed)


@dataclass(frozen=True)
class OciImage:
    layers: tuple[bytes, ...]
    config: bytes
    manifest: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)


def make_image(specs: list[LayerSpec], architecture: str = "amd64") -> OciImage:
    return image_of_layers([make_layer(spec) for spec in specs], architecture)


def image_of_layers(made: list[tuple[bytes, str]], architecture: str = "amd64") -> OciImage:
    """An image of gzip layers given with their diff_ids (see `make_layer`)."""
    layers, diff_ids = zip(*made, strict=True)
    config = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/tool"], "Labels": {"test": "yes"}},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": sha256_digest(config_bytes), "size": len(config_bytes)},
        "layers": [
            {"mediaType": oci.OCI_LAYER_GZIP, "digest": sha256_digest(layer), "size": len(layer)} for layer in layers
        ],
    }
    return OciImage(tuple(layers), config_bytes, json.dumps(manifest, sort_keys=True).encode())


def sample_image(seed: int = 1) -> OciImage:
    """Two layers: files of several chunk sizes, a symlink, a hard link, a whiteout, an overwrite."""
    rng = random.Random(seed)
    big = rng.randbytes(300_000)
    lower: LayerSpec = {
        "bin": None,
        "bin/tool": big,
        "bin/tool-link": ("hardlink", "bin/tool"),
        "etc": None,
        "etc/hostname": b"lower\n",
        "etc/gone": b"to be removed\n",
        "etc/zeros": bytes(200_000),
        "lib": None,
        "lib/libc.so": ("symlink", "libc.so.6"),
        "lib/libc.so.6": rng.randbytes(70_000),
    }
    upper: LayerSpec = {
        "etc": None,
        "etc/hostname": b"upper\n",
        "etc/.wh.gone": b"",
        "srv": None,
        "srv/data.txt": b"hello world\n" * 5000,
    }
    return make_image([lower, upper])


def push_image(client: RegistryClient, ref: ImageReference, image: OciImage) -> str:
    for blob in (*image.layers, image.config):
        client.push_blob(ref, sha256_digest(blob), blob)
    return client.push_manifest(ref, image.manifest, oci.OCI_MANIFEST)


def write_oci_layout(directory: str, image: OciImage, tag: str = "latest") -> None:
    """`directory` as an OCI image layout holding `image` under `tag`."""
    _write_layout(directory, [image], image.manifest, oci.OCI_MANIFEST, tag)


def write_multi_platform_layout(directory: str, images: dict[str, OciImage], tag: str = "latest") -> None:
    """`directory` as an OCI image layout whose `tag` is an index of `images` by linux/ARCH."""
    entries = [
        {
            "mediaType": oci.OCI_MANIFEST,
            "digest": image.digest,
            "size": len(image.manifest),
            "platform": {"os": "linux", "architecture": architecture},
        }
        for architecture, image in images.items()
    ]
    index = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": entries}).encode()
    _write_layout(directory, list(images.values()), index, oci.OCI_INDEX, tag)


def _write_layout(directory: str, images: list[OciImage], top: bytes, top_type: str, tag: str) -> None:
    blobs = os.path.join(directory, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    for blob in (top, *(blob for image in images for blob in (*image.layers, image.config, image.manifest))):
        with open(os.path.join(blobs, hashlib.sha256(blob).hexdigest()), "wb") as file:
            file.write(blob)
    with open(os.path.join(directory, "oci-layout"), "w") as file:
        json.dump({"imageLayoutVersion": "1.0.0"}, file)
    descriptor = {
        "mediaType": top_type,
        "digest": sha256_digest(top),
        "size": len(top),
        "annotations": {oci.ANNOTATION_REF_NAME: tag},
    }
    with open(os.path.join(directory, "index.json"), "w") as file:
        json.dump({"schemaVersion": 2, "manifests": [descriptor]}, file)
