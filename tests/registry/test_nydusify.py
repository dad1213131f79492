"""`nydusify convert` and `check` end to end against a real registry on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from builder import nydusify
from builder.build import BuildOptions
from daemon.storage.registry import RegistryClient, RegistryOptions
from rafs import oci
from rafs.blob import decode_chunk
from rafs.errors import BuildError, ConvertError
from rafs.mapped import open_bootstrap
from rafs.oci import ImageReference, sha256_digest
from tests.registry.images import image_of_layers, make_image, push_image, sample_image, write_oci_layout
from tests.registry_fixture import RunningRegistry, free_port

CHUNK_SIZE = "0x10000"


@pytest.fixture
def client() -> RegistryClient:
    return RegistryClient(RegistryOptions(docker_config=""))


REPO_ROOT = Path(__file__).resolve().parents[2]


def run_nydusify(*arguments: str) -> subprocess.CompletedProcess[str]:
    """The `nydusify` console script's `main`, run from this checkout (not whatever is installed)."""
    command = [sys.executable, "-m", "builder.nydusify", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


def test_convert_pushes_a_checkable_nydus_image(
    registry: RunningRegistry, client: RegistryClient, tmp_path: Path
) -> None:
    image = sample_image()
    source = ImageReference.parse(f"{registry.host}/library/app:1.0")
    push_image(client, source, image)
    target = ImageReference.parse(f"{registry.host}/library/app:1.0-nydus")

    converted = run_nydusify(
        "convert", "--source", str(source), "--target", str(target), "--chunk-size", CHUNK_SIZE,
        "--work-dir", str(tmp_path / "work"),
    )  # fmt: skip
    assert converted.returncode == 0, converted.stderr
    digest = converted.stdout.strip()
    manifest = client.get_image_manifest(target)
    assert manifest.digest == digest

    layers: list[dict[str, Any]] = manifest.document["layers"]  # type: ignore[assignment]
    *blob_layers, boot_layer = layers
    assert blob_layers, "a non-empty image has at least one blob"
    for layer in blob_layers:
        assert layer["mediaType"] == oci.NYDUS_BLOB
        assert layer["annotations"] == {oci.ANNOTATION_NYDUS_BLOB: "true"}
    assert boot_layer["mediaType"] == oci.OCI_LAYER_GZIP
    assert boot_layer["annotations"] == {
        oci.ANNOTATION_NYDUS_BOOTSTRAP: "true",
        oci.ANNOTATION_NYDUS_FS_VERSION: "pyrafs-1",
    }

    config = json.loads(client.read_blob(target, manifest.document["config"]["digest"]))  # type: ignore[index]
    source_config = json.loads(image.config)
    assert config["config"] == source_config["config"]
    assert config["rootfs"]["diff_ids"][:-1] == [layer["digest"] for layer in blob_layers]

    bootstrap_path = nydusify.pull_converted(client, target, str(tmp_path / "pulled"))
    bootstrap = open_bootstrap(bootstrap_path)
    assert bootstrap.chunk_size == int(CHUNK_SIZE, 0)
    assert bootstrap.resolve("/etc/gone") is None
    ranges = 0
    for index in range(bootstrap.superblock.chunk_count):
        record = bootstrap.chunk(index)
        if record.is_zero:
            continue
        blob = bootstrap.blobs[record.blob_index]
        stored = client.read_blob_range(
            target, f"sha256:{blob.blob_id}", record.compressed_offset, record.compressed_size
        )
        assert len(decode_chunk(stored, record, blob.compressor, bootstrap.digester)) == record.uncompressed_size
        ranges += 1
    assert ranges > 4

    checked = run_nydusify("check", "--source", str(source), "--target", str(target))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("OK:")


def test_convert_with_a_trace_writes_the_prefetch_chunk_table(
    registry: RunningRegistry, client: RegistryClient, tmp_path: Path
) -> None:
    source = ImageReference.parse(f"{registry.host}/library/traced:1.0")
    push_image(client, source, sample_image())
    target = ImageReference.parse(f"{registry.host}/library/traced:1.0-nydus")
    trace = tmp_path / "trace.txt"  # what `nydusd --trace-out` writes: chunks in first-read order
    chunk = int(CHUNK_SIZE, 0)
    trace.write_text(f"/bin/tool\t{2 * chunk}-{3 * chunk}\n/lib/libc.so.6\t0-{chunk}\n/bin/tool\t0-{chunk}\n")
    converted = run_nydusify(
        "convert", "--source", str(source), "--target", str(target), "--chunk-size", CHUNK_SIZE,
        "--prefetch-files", str(trace), "--work-dir", str(tmp_path / "work"),
    )  # fmt: skip
    assert converted.returncode == 0, converted.stderr
    bootstrap = open_bootstrap(nydusify.pull_converted(client, target, str(tmp_path / "pulled")))
    tool, libc = bootstrap.resolve(b"/bin/tool"), bootstrap.resolve(b"/lib/libc.so.6")
    assert bootstrap.prefetch_inodes() == [tool, libc]
    assert bootstrap.prefetch_chunks() == [(tool, 2), (libc, 0), (tool, 0)]
    checked = run_nydusify("check", "--source", str(source), "--target", str(target))
    assert checked.returncode == 0, checked.stderr


def test_convert_guesses_a_prefetch_list_from_the_entrypoint_unless_told_not_to(
    registry: RunningRegistry, client: RegistryClient, tmp_path: Path
) -> None:
    """The config's Cmd is `/bin/tool`: a `#!/bin/sh` script here, so the guessed list is the
    script, then its interpreter; `--prefetch-policy none` lists nothing; a policy this
    converter does not know is refused in one line."""
    image = make_image(
        [{"bin": None, "bin/tool": b"#!/bin/sh\necho hi\n", "bin/sh": b"a shell", "bin/unused": b"x" * 5000}]
    )
    source = ImageReference.parse(f"{registry.host}/library/guessed:1.0")
    push_image(client, source, image)
    listed = {}
    for policy in ("entrypoint", "none"):
        target = ImageReference.parse(f"{registry.host}/library/guessed:{policy}")
        converted = run_nydusify(
            "convert", "--source", str(source), "--target", str(target), "--prefetch-policy", policy,
            "--work-dir", str(tmp_path / policy),
        )  # fmt: skip
        assert converted.returncode == 0, converted.stderr
        bootstrap = open_bootstrap(nydusify.pull_converted(client, target, str(tmp_path / f"pulled-{policy}")))
        names = {ino: path for path, ino in bootstrap.walk()}
        listed[policy] = [names[ino] for ino in bootstrap.prefetch_inodes()]
    assert listed == {"entrypoint": [b"/bin/tool", b"/bin/sh"], "none": []}
    refused = run_nydusify("convert", "--source", str(source), "--target", str(target), "--prefetch-policy", "all")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--prefetch-policy" in refused.stderr


def test_convert_is_deterministic_and_skips_present_blobs(
    registry: RunningRegistry, client: RegistryClient, tmp_path: Path
) -> None:
    image = sample_image(seed=5)
    source = ImageReference.parse(f"{registry.host}/demo/twice")
    push_image(client, source, image)
    target = ImageReference.parse(f"{registry.host}/demo/twice:nydus")
    options = BuildOptions(chunk_size=int(CHUNK_SIZE, 0))
    platforms = [oci.Platform("linux", "amd64")]
    first = nydusify.convert(client, str(source), target, str(tmp_path / "one"), options, platforms)
    second = nydusify.convert(client, str(source), target, str(tmp_path / "two"), options, platforms)
    assert first.digest == second.digest
    assert first.blobs_pushed > 0 and second.blobs_pushed == 0

    layout = tmp_path / "layout"
    write_oci_layout(str(layout), image, tag="v1")
    from_layout = ImageReference.parse(f"{registry.host}/demo/from-layout:nydus")
    third = nydusify.convert(client, f"oci:{layout}:v1", from_layout, str(tmp_path / "three"), options, platforms)
    assert third.digest == first.digest


def test_check_names_what_differs(registry: RunningRegistry, client: RegistryClient, tmp_path: Path) -> None:
    original = make_image([{"etc": None, "etc/motd": b"hello\n", "etc/same": b"same\n"}])
    changed = make_image([{"etc": None, "etc/motd": b"changed\n", "etc/same": b"same\n"}])
    source = ImageReference.parse(f"{registry.host}/demo/orig")
    other = ImageReference.parse(f"{registry.host}/demo/other")
    push_image(client, source, original)
    push_image(client, other, changed)
    target = ImageReference.parse(f"{registry.host}/demo/orig:nydus")
    assert run_nydusify("convert", "--source", str(source), "--target", str(target)).returncode == 0

    result = run_nydusify("check", "--source", str(other), "--target", str(target))
    assert result.returncode == ConvertError.exit_code
    assert "/etc/motd: differs from the source" in result.stderr
    assert "/etc/same" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_convert_errors_are_one_line(registry: RunningRegistry, tmp_path: Path) -> None:
    missing = run_nydusify("convert", "--source", f"{registry.host}/no/such:tag", "--target", f"{registry.host}/x:y")
    assert missing.returncode != 0
    assert missing.stderr.count("\n") == 1 and "not found" in missing.stderr and "no/such" in missing.stderr
    converted_twice = ImageReference.parse(f"{registry.host}/demo/already:nydus")
    client = RegistryClient(RegistryOptions(docker_config=""))
    push_image(client, ImageReference.parse(f"{registry.host}/demo/already"), sample_image())
    assert (
        run_nydusify(
            "convert", "--source", f"{registry.host}/demo/already", "--target", str(converted_twice)
        ).returncode
        == 0
    )
    again = run_nydusify("convert", "--source", str(converted_twice), "--target", f"{registry.host}/demo/again")
    assert again.returncode == ConvertError.exit_code and "already a converted image" in again.stderr


def test_convert_from_a_registry_that_is_down_fails_fast_in_one_line(tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens here
    work = tmp_path / "work"
    completed = run_nydusify(
        "convert", "--source", f"{host}/app:1", "--target", f"{host}/app:2", "--work-dir", str(work)
    )
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert host in lines[0] and "connection refused" in lines[0]


def test_convert_of_a_corrupt_source_layer_names_it_and_pushes_nothing(
    registry: RunningRegistry, client: RegistryClient, tmp_path: Path
) -> None:
    good = sample_image()
    broken_layer = good.layers[0][: len(good.layers[0]) // 2]  # a gzip stream cut in half
    broken = image_of_layers([(broken_layer, sha256_digest(b"unused")), (good.layers[1], sha256_digest(b"also"))])
    source = ImageReference.parse(f"{registry.host}/broken/app:1")
    push_image(client, source, broken)
    target = f"{registry.host}/broken/app:nydus"
    completed = run_nydusify("convert", "--source", str(source), "--target", target, "--work-dir", str(tmp_path / "w"))
    assert completed.returncode == BuildError.exit_code
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert sha256_digest(broken_layer)[7:19] in lines[0] and "bin/tool" in lines[0]
    assert not list((tmp_path / "w").rglob("*.boot"))
    missing = run_nydusify("check", "--source", str(source), "--target", target)
    assert missing.returncode != 0 and "not found" in missing.stderr  # no manifest was pushed
