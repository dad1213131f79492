"""Make the built-in example image: two OCI layers around Debian's static busybox.

Layer 1 is a small root (busybox and its applet links, /etc files); layer 2 adds an "app"
and deletes a file of layer 1 with a whiteout, so the example exercises the overlay merge.
Layer 2 also carries 48 MiB of data the workload never reads, which is what lazy loading
skips. Written with fixed mtimes, a seeded generator and sorted entries, so the layers (and
the OCI image layout around them) are byte-identical every time.

    python3 examples/make_example.py OUTPUT_DIR
        # writes OUTPUT_DIR/base.tar.gz, OUTPUT_DIR/app.tar.gz and an OCI layout OUTPUT_DIR/oci
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile

BUSYBOX = "/bin/busybox"
MTIME = 1_700_000_000
APPLETS = ["sh", "ls", "cat", "echo", "wc", "id", "head", "sha256sum", "find", "env", "true"]


def _add(
    archive: tarfile.TarFile,
    name: str,
    *,
    data: bytes | None = None,
    mode: int = 0o644,
    kind: bytes = tarfile.REGTYPE,
    link: str = "",
) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.mode, info.type, info.linkname = MTIME, mode, kind, link
    if data is not None:
        info.size = len(data)
    archive.addfile(info, io.BytesIO(data) if data is not None else None)


def _write_layer(path: str, fill: object) -> str:
    """Write a gzip layer; returns the sha256 diff_id of its uncompressed tar."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        fill(archive)  # type: ignore[operator]
    with open(path, "wb") as file, gzip.GzipFile(fileobj=file, mode="wb", mtime=0) as compressed:
        compressed.write(raw.getvalue())
    return "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()


def _put_blob(layout: str, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as file:
        file.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_oci_layout(layout: str, layers: list[str], diff_ids: list[str]) -> None:
    """An OCI image layout (image-spec v1) holding the layers, tagged `latest`."""
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/app/hello.sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    layer_descriptors = []
    for path in layers:
        with open(path, "rb") as file:
            layer_descriptors.append(
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_put_blob(layout, file.read())}
            )
    config_descriptor = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        **_put_blob(layout, json.dumps(config, sort_keys=True).encode()),
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_descriptor,
        "layers": layer_descriptors,
    }
    manifest_descriptor = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **_put_blob(layout, json.dumps(manifest, sort_keys=True).encode()),
        "annotations": {"org.opencontainers.image.ref.name": "latest"},
    }
    with open(os.path.join(layout, "index.json"), "w") as file:
        json.dump({"schemaVersion": 2, "manifests": [manifest_descriptor]}, file, sort_keys=True)
    with open(os.path.join(layout, "oci-layout"), "w") as file:
        json.dump({"imageLayoutVersion": "1.0.0"}, file)


def main() -> int:
    output = sys.argv[1] if len(sys.argv) > 1 else "example"
    os.makedirs(output, exist_ok=True)
    if not os.path.exists(BUSYBOX):
        print(f"{BUSYBOX} is missing: install Debian's busybox-static", file=sys.stderr)
        return 1
    with open(BUSYBOX, "rb") as file:
        busybox = file.read()
    version = subprocess.run([BUSYBOX], capture_output=True, text=True).stdout.splitlines()[0]

    def base(archive: tarfile.TarFile) -> None:
        for directory in ("bin", "etc", "tmp", "root", "home", "home/app", "proc", "sys", "dev"):
            _add(archive, directory, kind=tarfile.DIRTYPE, mode=0o1777 if directory == "tmp" else 0o755)
        _add(archive, "bin/busybox", data=busybox, mode=0o755)
        for applet in APPLETS:
            _add(archive, f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
        _add(archive, "etc/os-release", data=f'NAME="nydus-py example"\nID=example\nBUSYBOX="{version}"\n'.encode())
        _add(archive, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
        _add(archive, "etc/group", data=b"root:x:0:\napp:x:1000:\n")
        _add(archive, "etc/secret", data=b"root only\n", mode=0o600)
        _add(archive, "etc/motd", data=b"removed by the app layer\n")

    def app(archive: tarfile.TarFile) -> None:
        _add(archive, "etc/.wh.motd", data=b"")
        _add(archive, "app", kind=tarfile.DIRTYPE, mode=0o755)
        _add(archive, "app/hello.sh", data=b"#!/bin/sh\necho hello from a lazily loaded image\n", mode=0o755)
        _add(archive, "app/data.bin", data=bytes(range(256)) * 8192)
        _add(archive, "app/model.bin", data=random.Random(42).randbytes(48 << 20))

    layers = [os.path.join(output, "base.tar.gz"), os.path.join(output, "app.tar.gz")]
    diff_ids = [_write_layer(layers[0], base), _write_layer(layers[1], app)]
    write_oci_layout(os.path.join(output, "oci"), layers, diff_ids)
    print(" ".join(layers), os.path.join(output, "oci"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
