"""The converted-image conventions, read in one place: every platform of a layout converts to
its own config and layers, and `nydusd --image` and `nydusify check` accept and refuse the same
manifests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from builder import nydusify
from builder.build import BuildOptions, build
from builder.unpack import unpack_to_directory
from daemon.storage.image import fetch_bootstrap
from daemon.storage.registry import RegistryClient, RegistryOptions
from rafs import oci
from rafs.errors import ImageError
from rafs.mapped import open_bootstrap
from rafs.oci import ImageReference, Platform
from tests.registry.images import make_image, push_image, sample_image, write_multi_platform_layout
from tests.registry_fixture import RunningRegistry

ARCHITECTURES = ("amd64", "arm64")
OPTIONS = BuildOptions(chunk_size=0x10000)


@pytest.fixture
def client() -> RegistryClient:
    return RegistryClient(RegistryOptions(docker_config=""))


def two_platform_layout(directory: Path) -> None:
    images = {arch: make_image([{"etc": None, "etc/arch": arch.encode()}], arch) for arch in ARCHITECTURES}
    write_multi_platform_layout(str(directory), images, tag="v1")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_platform_of_a_layout_converts_with_its_own_config_and_layers(
    registry: RunningRegistry, client: RegistryClient, tmp_path: Path, architecture: str
) -> None:
    layout = tmp_path / "layout"
    two_platform_layout(layout)
    target = ImageReference.parse(f"{registry.host}/multi/app:{architecture}")
    platforms = [Platform("linux", architecture)]
    nydusify.convert(client, f"oci:{layout}:v1", target, str(tmp_path / "work"), OPTIONS, platforms)

    bootstrap_path = nydusify.pull_converted(client, target, str(tmp_path / "pulled"))
    manifest = oci.parse_converted_manifest(client.get_image_manifest(target).document, str(target))
    config = json.loads(client.read_blob(target, manifest.config_digest))
    assert config["architecture"] == architecture
    unpack_to_directory(open_bootstrap(bootstrap_path), str(tmp_path / "pulled" / "blobs"), str(tmp_path / "tree"))
    assert (tmp_path / "tree" / "etc" / "arch").read_bytes() == architecture.encode()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_nydus_image_create_takes_the_platform_asked_for(tmp_path: Path, architecture: str) -> None:
    layout = tmp_path / "layout"
    two_platform_layout(layout)
    options = BuildOptions(chunk_size=0x10000, platforms=(Platform("linux", architecture),))
    build("oci", [f"{layout}:v1"], str(tmp_path / "image.boot"), str(tmp_path / "blobs"), options)
    unpack_to_directory(open_bootstrap(str(tmp_path / "image.boot")), str(tmp_path / "blobs"), str(tmp_path / "tree"))
    assert (tmp_path / "tree" / "etc" / "arch").read_bytes() == architecture.encode()


Manifest = dict[str, object]


def layers_of(manifest: Manifest) -> list[dict[str, object]]:
    layers = manifest["layers"]
    assert isinstance(layers, list)
    return layers


def drop_annotation(position: int, key: str) -> Callable[[Manifest], None]:
    def change(manifest: Manifest) -> None:
        del layers_of(manifest)[position]["annotations"][key]  # type: ignore[attr-defined]

    return change


def set_field(position: int, key: str, value: object) -> Callable[[Manifest], None]:
    def change(manifest: Manifest) -> None:
        layers_of(manifest)[position][key] = value

    return change


def swap_blobs(manifest: Manifest) -> None:
    layers = layers_of(manifest)
    layers[0], layers[1] = layers[1], layers[0]


def bootstrap_first(manifest: Manifest) -> None:
    layers = layers_of(manifest)
    layers.insert(0, layers.pop())


def drop_a_blob(manifest: Manifest) -> None:
    del layers_of(manifest)[0]


def fs_version(version: str) -> Callable[[Manifest], None]:
    def change(manifest: Manifest) -> None:
        layers_of(manifest)[-1]["annotations"][oci.ANNOTATION_NYDUS_FS_VERSION] = version  # type: ignore[index]

    return change


MALFORMED: dict[str, Callable[[Manifest], None]] = {
    "no-bootstrap-annotation": drop_annotation(-1, oci.ANNOTATION_NYDUS_BOOTSTRAP),
    "nydus-rafs-v6": fs_version("6"),
    "no-fs-version": drop_annotation(-1, oci.ANNOTATION_NYDUS_FS_VERSION),
    "blob-not-a-nydus-blob": set_field(0, "mediaType", oci.OCI_LAYER_GZIP),
    "blob-not-annotated": drop_annotation(1, oci.ANNOTATION_NYDUS_BLOB),
    "blobs-out-of-order": swap_blobs,
    "bootstrap-not-last": bootstrap_first,
    "blob-missing": drop_a_blob,
}


@pytest.fixture
def converted(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageReference, Manifest]:
    """A converted image of two blobs, and its manifest."""
    client = RegistryClient(RegistryOptions(docker_config=""))
    source = ImageReference.parse(f"{registry.host}/rules/source")
    push_image(client, source, sample_image(seed=3))
    target = ImageReference.parse(f"{registry.host}/rules/app:nydus")
    platforms = [Platform("linux", "amd64")]
    nydusify.convert(client, str(source), target, str(tmp_path_factory.mktemp("convert")), OPTIONS, platforms)
    manifest = client.get_image_manifest(target).document
    assert len(layers_of(manifest)) == 3, "two blob layers and the bootstrap layer"
    return target, manifest


def test_both_readers_accept_the_converted_image(
    converted: tuple[ImageReference, Manifest], client: RegistryClient, tmp_path: Path
) -> None:
    target, _ = converted
    assert open_bootstrap(fetch_bootstrap(client, target, str(tmp_path / "nydusd"))).blobs
    assert open_bootstrap(nydusify.pull_converted(client, target, str(tmp_path / "check"))).blobs


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_nydusd_image_and_nydusify_check_refuse_the_same_manifests(
    converted: tuple[ImageReference, Manifest], client: RegistryClient, tmp_path: Path, name: str
) -> None:
    target, manifest = converted
    broken = json.loads(json.dumps(manifest))
    MALFORMED[name](broken)
    ref = ImageReference(target.registry, target.repository, name)
    client.push_manifest(ref, json.dumps(broken).encode(), oci.OCI_MANIFEST)
    with pytest.raises(ImageError) as by_nydusd:
        fetch_bootstrap(client, ref, str(tmp_path / "nydusd"))
    with pytest.raises(ImageError) as by_check:
        nydusify.pull_converted(client, ref, str(tmp_path / "check"))
    assert str(by_nydusd.value) == str(by_check.value)
