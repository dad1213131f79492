"""Bad input to `unpack`, `merge` and `check`: one line naming what and where, non-zero exit, nothing half-written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.builder.common import write_layers
from tests.conftest import run_console
from tests.reference import Entry

LAYER = [
    Entry("", "dir", 0o755),
    Entry("etc", "dir", 0o755),
    Entry("etc/hosts", "file", 0o644, data=b"127.0.0.1 localhost\n" * 500),
    Entry("etc/hosts-link", "hardlink", target="etc/hosts"),
]


@pytest.fixture
def image(tmp_path: Path) -> tuple[str, str]:
    """A built image: (bootstrap, blob dir)."""
    (tmp_path / "layers").mkdir()
    layers = write_layers(str(tmp_path / "layers"), [LAYER])
    bootstrap, blobs = str(tmp_path / "image.boot"), str(tmp_path / "blobs")
    run_console("nydus-image", ["create", "-t", "targz", "-B", bootstrap, "-D", blobs, *layers], check=True)
    return bootstrap, blobs


def _fails_in_one_line(arguments: list[str], *needles: str) -> str:
    completed = run_console("nydus-image", arguments)
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Errno" not in lines[0]
    return lines[0]


def test_unpack_refuses_a_non_empty_directory_and_leaves_it_alone(tmp_path: Path, image: tuple[str, str]) -> None:
    bootstrap, blobs = image
    output = tmp_path / "existing"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    _fails_in_one_line(["unpack", "-B", bootstrap, "-D", blobs, "-o", str(output)], str(output), "not empty")
    assert sorted(os.listdir(output)) == ["keep.txt"]


def test_unpack_into_an_empty_existing_directory_works(tmp_path: Path, image: tuple[str, str]) -> None:
    bootstrap, blobs = image
    output = tmp_path / "empty"
    output.mkdir()
    run_console("nydus-image", ["unpack", "-B", bootstrap, "-D", blobs, "-o", str(output)], check=True)
    assert (output / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n" * 500
    assert os.stat(output / "etc" / "hosts").st_ino == os.stat(output / "etc" / "hosts-link").st_ino


@pytest.mark.parametrize("name", ["tree", "tree.tar"])
def test_unpack_into_a_missing_parent_is_refused(tmp_path: Path, image: tuple[str, str], name: str) -> None:
    bootstrap, blobs = image
    output = tmp_path / "no" / "such" / name
    _fails_in_one_line(["unpack", "-B", bootstrap, "-D", blobs, "-o", str(output)], str(tmp_path / "no" / "such"))
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("name", ["tree", "tree.tar"])
def test_unpack_with_a_missing_blob_leaves_no_output(tmp_path: Path, image: tuple[str, str], name: str) -> None:
    bootstrap, _ = image
    before = sorted(os.listdir(tmp_path))
    output = tmp_path / name
    _fails_in_one_line(
        ["unpack", "-B", bootstrap, "-D", str(tmp_path / "no-blobs"), "-o", str(output)], "no-blobs", "missing"
    )
    assert sorted(os.listdir(tmp_path)) == before


def test_check_with_a_missing_blob_dir_names_it(tmp_path: Path, image: tuple[str, str]) -> None:
    bootstrap, _ = image
    _fails_in_one_line(["check", "-B", bootstrap, "-D", str(tmp_path / "no-blobs")], "no-blobs", "missing")


def test_merge_of_a_missing_or_foreign_file_writes_nothing(tmp_path: Path, image: tuple[str, str]) -> None:
    bootstrap, _ = image
    merged = tmp_path / "merged.boot"
    before = sorted(os.listdir(tmp_path))
    missing = str(tmp_path / "missing.boot")
    _fails_in_one_line(["merge", "-B", str(merged), bootstrap, missing], missing, "No such file or directory")
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"not": "a bootstrap", "padding": "' + "x" * 400 + '"}')
    _fails_in_one_line(["merge", "-B", str(merged), str(foreign)], str(foreign), "not a bootstrap")
    assert sorted(os.listdir(tmp_path)) == sorted([*before, "foreign.json"])


@pytest.mark.parametrize("option", ["--bootstrap", "--output-json"])
def test_create_into_a_missing_directory_fails_before_building(tmp_path: Path, option: str) -> None:
    layers = write_layers(str(tmp_path), [LAYER])
    before = sorted(os.listdir(tmp_path))
    outputs = {"--bootstrap": str(tmp_path / "image.boot"), "--output-json": str(tmp_path / "build.json")}
    outputs[option] = str(tmp_path / "no" / "such" / "file")
    arguments = ["create", "-t", "targz", "-D", str(tmp_path / "blobs"), *layers]
    for name, value in outputs.items():
        arguments += [name, value]
    _fails_in_one_line(arguments, option, str(tmp_path / "no" / "such"), "does not exist")
    assert sorted(os.listdir(tmp_path)) == before  # no bootstrap, no blob dir


@pytest.mark.parametrize("mirror", ["ftp://mirror:5000", "http://", "http://mirror:5000/v2", ""])
def test_warm_refuses_a_mirror_that_is_not_a_registry_address(mirror: str) -> None:
    """`nydusify warm --mirror` takes host[:port] or http(s)://host[:port]; anything else is one line, exit 2."""
    completed = run_console("nydusify", ["warm", "--target", "127.0.0.1:1/demo/app:v1", "--mirror", mirror])
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "--mirror" in lines[0] and "http(s)://host[:port]" in lines[0], completed.stderr
