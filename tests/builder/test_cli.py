"""Every `nydus-image` subcommand, run as a user runs it: the console script in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest

from builder.unpack import unpack_to_directory
from rafs.mapped import open_bootstrap
from tests.builder.common import write_layers, write_oci_layout
from tests.conftest import run_console
from tests.reference import Entry, apply_layers, diff, snapshot_directory, snapshot_tar, snapshot_tree, whiteout

LAYERS = [
    [
        Entry("", "dir", 0o755, mtime_ns=1_700_000_000_123_456_789),
        Entry("etc", "dir", 0o755, mtime_ns=1_700_000_000_000_000_001),
        Entry("etc/os-release", "file", 0o644, data=b"ID=test\n" * 1000, xattrs=(("user.kind", b"text"),)),
        Entry("bin", "dir", 0o755),
        Entry("bin/tool", "file", 0o4755, uid=1000, gid=1000, data=bytes(range(256)) * 64),
        Entry("bin/tool-link", "hardlink", target="bin/tool"),
        Entry("bin/sh", "symlink", 0o777, target="/bin/tool"),
        Entry("tmp", "dir", 0o1777),
        Entry("dev", "dir"),
        Entry("dev/zero", "char", 0o666, rdev=os.makedev(1, 5)),
    ],
    [whiteout("bin/tool-link"), Entry("etc/motd", "file", data=b"welcome\n")],
]


def nydus_image(*arguments: str) -> str:
    return run_console("nydus-image", list(arguments), check=True).stdout


@pytest.fixture
def layer_files(tmp_path: Path) -> list[str]:
    (tmp_path / "layers").mkdir()
    return write_layers(str(tmp_path / "layers"), LAYERS, ["gzip", "zstd"])


def _expected() -> dict[str, object]:
    return snapshot_tree(apply_layers(LAYERS))  # type: ignore[return-value]


def test_create_targz_then_check_inspect_stat_unpack(tmp_path: Path, layer_files: list[str]) -> None:
    bootstrap, blobs = str(tmp_path / "image.boot"), str(tmp_path / "blobs")
    output_json = tmp_path / "build.json"
    printed = nydus_image("create", "-t", "targz", "-B", bootstrap, "-D", blobs, "-J", str(output_json), *layer_files)
    built = json.loads(output_json.read_text())
    assert built["layers"] == 2 and sorted(built["blobs"]) == sorted(os.listdir(blobs))
    assert built["root_digest"][:16] in printed

    checked = json.loads(nydus_image("check", "-B", bootstrap, "-D", blobs, "--json"))
    assert checked["root_digest"] == built["root_digest"]
    assert checked["blobs_verified"] == len(built["blobs"])

    tool = json.loads(nydus_image("inspect", "-B", bootstrap, "/bin/tool", "--json"))
    assert (tool["type"], tool["mode"], tool["uid"], tool["size"]) == ("file", "104755", 1000, 256 * 64)
    assert tool["nlink"] == 1  # the second name was whited out
    assert sum(chunk["uncompressed_size"] for chunk in tool["chunks"]) == tool["size"]
    release = json.loads(nydus_image("inspect", "-B", bootstrap, "/etc/os-release", "--json"))
    assert release["xattrs"] == {"user.kind": b"text".hex()}
    assert "target: /bin/tool" in nydus_image("inspect", "-B", bootstrap, "/bin/sh")

    tree = json.loads(nydus_image("inspect", "-B", bootstrap, "--json"))
    assert [row["path"] for row in tree] == [
        "/",
        "/bin",
        "/bin/sh",
        "/bin/tool",
        "/dev",
        "/dev/zero",
        "/etc",
        "/etc/motd",
        "/etc/os-release",
        "/tmp",
    ]
    assert len(nydus_image("inspect", "-B", bootstrap).strip().splitlines()) == len(tree)

    figures = json.loads(nydus_image("stat", "-B", bootstrap, "--json"))
    assert figures["entries"] == {"directory": 5, "file": 3, "symlink": 1, "char": 1}
    assert figures["logical_bytes"] == 8000 + 256 * 64 + 8
    assert figures["bootstrap_bytes"] == os.path.getsize(bootstrap)
    text = nydus_image("stat", "-B", bootstrap)
    assert "logical_bytes" in text
    assert "entries: char 1, directory 5, file 3, symlink 1\n" in text  # not a Python dict

    nydus_image("unpack", "-B", bootstrap, "-D", blobs, "-o", str(tmp_path / "tree"))
    nydus_image("unpack", "-B", bootstrap, "-D", blobs, "-o", str(tmp_path / "tree.tar"))
    assert diff(_expected(), snapshot_directory(str(tmp_path / "tree"))) == []  # type: ignore[arg-type]
    assert diff(_expected(), snapshot_tar(str(tmp_path / "tree.tar"))) == []  # type: ignore[arg-type]
    assert tarfile.is_tarfile(tmp_path / "tree.tar")


def test_create_from_oci_layout(tmp_path: Path, layer_files: list[str]) -> None:
    layout_dir = write_oci_layout(str(tmp_path / "oci"), layer_files, tag="v1")
    bootstrap, blobs = str(tmp_path / "image.boot"), str(tmp_path / "blobs")
    nydus_image("create", "-t", "oci", "-B", bootstrap, "-D", blobs, f"{layout_dir}:v1")
    nydus_image("check", "-B", bootstrap, "-D", blobs)
    unpack_to_directory(open_bootstrap(bootstrap), blobs, str(tmp_path / "tree"))
    assert diff(_expected(), snapshot_directory(str(tmp_path / "tree"))) == []  # type: ignore[arg-type]


def test_create_from_oci_layout_refuses_a_layer_that_does_not_match_its_digest(
    tmp_path: Path, layer_files: list[str]
) -> None:
    layout_dir = write_oci_layout(str(tmp_path / "oci"), layer_files)
    victim = Path(layout_dir, "blobs", "sha256", hashlib.sha256(Path(layer_files[0]).read_bytes()).hexdigest())
    victim.write_bytes(victim.read_bytes() + b"\0" * 1024)  # trailing bytes: same tar, other digest
    completed = run_console(
        "nydus-image",
        ["create", "-t", "oci", "-B", str(tmp_path / "b.boot"), "-D", str(tmp_path / "blobs"), layout_dir],
    )
    assert completed.returncode != 0
    assert victim.name[:12] in completed.stderr and "digest" in completed.stderr
    assert not (tmp_path / "b.boot").exists()


def test_create_from_directory_keeps_what_the_directory_has(tmp_path: Path, layer_files: list[str]) -> None:
    bootstrap, blobs = str(tmp_path / "first.boot"), str(tmp_path / "blobs")
    nydus_image("create", "-t", "targz", "-B", bootstrap, "-D", blobs, *layer_files)
    nydus_image("unpack", "-B", bootstrap, "-D", blobs, "-o", str(tmp_path / "source"))
    again, again_blobs = str(tmp_path / "again.boot"), str(tmp_path / "again-blobs")
    nydus_image("create", "-t", "directory", "-B", again, "-D", again_blobs, str(tmp_path / "source"))
    nydus_image("check", "-B", again, "-D", again_blobs)
    nydus_image("unpack", "-B", again, "-D", again_blobs, "-o", str(tmp_path / "copy"))
    assert diff(snapshot_directory(str(tmp_path / "source")), snapshot_directory(str(tmp_path / "copy"))) == []
    assert open_bootstrap(again).superblock.root_digest == open_bootstrap(bootstrap).superblock.root_digest


def test_create_layer_then_merge(tmp_path: Path, layer_files: list[str]) -> None:
    blobs = str(tmp_path / "blobs")
    layer_bootstraps = []
    for number, layer in enumerate(layer_files):
        layer_bootstraps.append(str(tmp_path / f"layer{number}.boot"))
        nydus_image("create", "--layer", "-t", "targz", "-B", layer_bootstraps[-1], "-D", blobs, layer)
    merged = str(tmp_path / "merged.boot")
    printed = nydus_image("merge", "-B", merged, *layer_bootstraps)
    assert "merged 2 layers" in printed
    nydus_image("check", "-B", merged, "-D", blobs)
    nydus_image("unpack", "-B", merged, "-D", blobs, "-o", str(tmp_path / "tree"))
    assert diff(_expected(), snapshot_directory(str(tmp_path / "tree"))) == []  # type: ignore[arg-type]
    whole = str(tmp_path / "whole.boot")
    nydus_image("create", "-t", "targz", "-B", whole, "-D", str(tmp_path / "whole-blobs"), *layer_files)
    assert open_bootstrap(merged).superblock.root_digest == open_bootstrap(whole).superblock.root_digest


def test_inspect_of_a_missing_path_is_one_line(tmp_path: Path, layer_files: list[str]) -> None:
    bootstrap = str(tmp_path / "image.boot")
    nydus_image("create", "-t", "targz", "-B", bootstrap, "-D", str(tmp_path / "blobs"), *layer_files)
    completed = run_console("nydus-image", ["inspect", "-B", bootstrap, "/no/such"])
    assert completed.returncode != 0
    assert completed.stderr.count("\n") == 1 and "/no/such" in completed.stderr
