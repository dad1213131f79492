"""The OCI client against a real `docker-registry` on loopback: push, pull, ranges, mirrors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from daemon.storage import backend
from daemon.storage.registry import (
    ManifestNotFound,
    Mirror,
    RegistryBackend,
    RegistryBlobNotFound,
    RegistryClient,
    RegistryError,
    RegistryOptions,
    RegistryRangeNotSatisfied,
)
from rafs import oci
from rafs.oci import ImageReference, Platform, sha256_digest
from tests.registry.images import make_image, push_image, sample_image
from tests.registry_fixture import RunningRegistry, free_port


@pytest.fixture
def client() -> RegistryClient:
    return RegistryClient(RegistryOptions(docker_config=""))


def test_push_then_pull_round_trip(registry: RunningRegistry, client: RegistryClient, tmp_path: Path) -> None:
    image = sample_image()
    ref = ImageReference.parse(f"{registry.host}/demo/app:v1")
    digest = push_image(client, ref, image)
    assert digest == image.digest

    manifest = client.get_image_manifest(ref)
    assert manifest.digest == image.digest and manifest.data == image.manifest
    assert manifest.media_type == oci.OCI_MANIFEST
    by_digest = client.get_manifest(ref.with_digest(digest))
    assert by_digest.data == image.manifest
    assert client.read_blob(ref, sha256_digest(image.config)) == image.config
    for layer in image.layers:
        target = tmp_path / "layer"
        assert client.download_blob(ref, sha256_digest(layer), str(target)) == len(layer)
        assert target.read_bytes() == layer
        assert client.blob_size(ref, sha256_digest(layer)) == len(layer)


def test_range_reads_match_the_blob(registry: RunningRegistry, client: RegistryClient) -> None:
    image = sample_image()
    ref = ImageReference.parse(f"{registry.host}/demo/ranges")
    push_image(client, ref, image)
    blob = image.layers[0]
    digest = sha256_digest(blob)
    rng = random.Random(7)
    for _ in range(20):
        offset = rng.randrange(len(blob))
        length = rng.randint(1, len(blob) - offset)
        assert client.read_blob_range(ref, digest, offset, length) == blob[offset : offset + length]
    assert client.read_blob_range(ref, digest, len(blob) - 1, 1) == blob[-1:]
    with pytest.raises(RegistryRangeNotSatisfied):
        client.read_blob_range(ref, digest, len(blob) - 10, 20)
    with pytest.raises(RegistryRangeNotSatisfied):
        client.read_blob_range(ref, digest, len(blob) + 10, 5)

    registry_backend = RegistryBackend(client, ref)
    assert registry_backend.read_range(digest[7:], 100, 50) == blob[100:150]
    assert registry_backend.blob_size(digest[7:]) == len(blob)
    with pytest.raises(backend.BlobNotFound):
        registry_backend.read_range("0" * 64, 0, 10)
    with pytest.raises(backend.BlobNotFound):
        registry_backend.read_range("../../etc/passwd", 0, 10)


def test_missing_things_have_named_errors(registry: RunningRegistry, client: RegistryClient) -> None:
    ref = ImageReference.parse(f"{registry.host}/demo/empty:nope")
    with pytest.raises(ManifestNotFound) as manifest_error:
        client.get_manifest(ref)
    assert "demo/empty" in str(manifest_error.value) and "\n" not in str(manifest_error.value)
    missing = "sha256:" + "ab" * 32
    with pytest.raises(RegistryBlobNotFound) as blob_error:
        client.read_blob_range(ref, missing, 0, 10)
    assert blob_error.value.digest == missing and missing in str(blob_error.value)
    assert client.blob_size(ref, missing) is None


def test_chunked_upload_and_skip_existing(registry: RunningRegistry) -> None:
    client = RegistryClient(RegistryOptions(docker_config="", upload_chunk_size=64 * 1024))
    ref = ImageReference.parse(f"{registry.host}/demo/chunked")
    data = random.Random(3).randbytes(200_000)
    digest = sha256_digest(data)
    assert client.push_blob(ref, digest, data) is True
    assert client.push_blob(ref, digest, data) is False
    assert client.read_blob(ref, digest) == data


def test_monolithic_upload_from_a_file(registry: RunningRegistry, client: RegistryClient, tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(random.Random(4).randbytes(150_000))
    digest = sha256_digest(path.read_bytes())
    ref = ImageReference.parse(f"{registry.host}/demo/file")
    assert client.push_blob(ref, digest, str(path)) is True
    assert client.read_blob(ref, digest) == path.read_bytes()


def test_index_selects_the_wanted_platform(registry: RunningRegistry) -> None:
    client = RegistryClient(RegistryOptions(docker_config="", platforms=(Platform("linux", "arm64"),)))
    ref = ImageReference.parse(f"{registry.host}/demo/multi:latest")
    amd = make_image([{"a": b"amd64"}])
    arm = make_image([{"a": b"arm64"}])
    for image in (amd, arm):
        push_image(client, ref.with_digest(image.digest), image)
    index = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_INDEX,
        "manifests": [
            {"mediaType": oci.OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest), "platform": platform}
            for image, platform in (
                (amd, {"os": "linux", "architecture": "amd64"}),
                (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
            )
        ],
    }
    client.push_manifest(ref, json.dumps(index).encode(), oci.OCI_INDEX)
    assert client.get_image_manifest(ref).digest == arm.digest
    amd_client = RegistryClient(RegistryOptions(docker_config="", platforms=(Platform("linux", "amd64"),)))
    assert amd_client.get_image_manifest(ref).digest == amd.digest
    s390 = RegistryClient(RegistryOptions(docker_config="", platforms=(Platform("linux", "s390x"),)))
    with pytest.raises(oci.InvalidReference, match="s390x"):
        s390.get_image_manifest(ref)


def test_mirror_first_then_origin(registry: RunningRegistry, tmp_path: Path) -> None:
    from tests.registry_fixture import start_registry

    image = sample_image()
    origin_ref = ImageReference.parse(f"{registry.host}/demo/mirrored")
    plain = RegistryClient(RegistryOptions(docker_config=""))
    push_image(plain, origin_ref, image)
    mirror = start_registry(tmp_path / "mirror")
    try:
        only_in_mirror = b"only the mirror has this"
        plain.push_blob(
            ImageReference.parse(f"{mirror.host}/demo/mirrored"), sha256_digest(only_in_mirror), only_in_mirror
        )
        dead = f"127.0.0.1:{free_port()}"
        client = RegistryClient(RegistryOptions(docker_config="", mirrors=(Mirror(dead), Mirror(mirror.host))))
        assert client.read_blob(origin_ref, sha256_digest(only_in_mirror)) == only_in_mirror
        layer = image.layers[0]
        assert client.read_blob_range(origin_ref, sha256_digest(layer), 5, 10) == layer[5:15]
        assert client.get_image_manifest(origin_ref).digest == image.digest
        assert client.push_blob(origin_ref, sha256_digest(only_in_mirror), only_in_mirror), "a push checks the origin"
        assert plain.blob_size(origin_ref, sha256_digest(only_in_mirror)) == len(only_in_mirror)
    finally:
        mirror.stop()


def test_backend_from_nydusd_config(registry: RunningRegistry, client: RegistryClient) -> None:
    from daemon.config import parse_config
    from daemon.storage.backends import open_backend
    from rafs.errors import ConfigError

    image = sample_image()
    ref = ImageReference.parse(f"{registry.host}/demo/config")
    push_image(client, ref, image)
    options = {"host": registry.host, "repo": "demo/config", "scheme": "http", "timeout": 5, "retry_limit": 1}
    config = parse_config({"device": {"backend": {"type": "registry", "config": options}}})
    configured = open_backend(config.backend)
    try:
        layer = image.layers[1]
        assert configured.read_range(sha256_digest(layer)[7:], 0, 64) == layer[:64]
    finally:
        configured.close()
    with pytest.raises(ConfigError, match=r"device\.backend\.config\.colour"):
        parse_config({"device": {"backend": {"type": "registry", "config": {**options, "colour": "blue"}}}})


@pytest.mark.logs_warnings  # provoked on purpose
def test_tls_verification_and_skip_verify(tls_registry: RunningRegistry) -> None:
    from daemon.storage.options import HttpOptions
    from daemon.storage.transport import TlsError

    ref = ImageReference.parse(f"{tls_registry.host}/secure/app")
    data = b"over https"
    trusting = RegistryClient(RegistryOptions(http=HttpOptions(skip_verify=True), plain_http=False, docker_config=""))
    assert trusting.push_blob(ref, sha256_digest(data), data)
    assert trusting.read_blob_range(ref, sha256_digest(data), 5, 5) == b"https"

    verifying = RegistryClient(RegistryOptions(plain_http=False, docker_config=""))
    with pytest.raises(TlsError, match="certificate not trusted"):
        verifying.read_blob(ref, sha256_digest(data))
    plain = RegistryClient(RegistryOptions(docker_config=""))  # loopback defaults to plain HTTP
    with pytest.raises(RegistryError, match="HTTP 400") as caught:
        plain.read_blob(ref, sha256_digest(data))  # a TLS server answers plain HTTP with 400
    assert type(caught.value) is RegistryError and caught.value.status == 400
