"""Hard links across layers, and what whiteouts and replacements do to a link group.

OCI's layer spec allows a hard link to a file of a lower layer but warns that extracting such a
layer alone may fail. A whole-stack build follows what Docker and containerd do when they apply
the layer onto the lower snapshot: the new name joins the lower file's inode. A per-layer
bootstrap (`create --layer`) holds that layer alone, so it refuses such a link with a message
that says to build the layers together.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.build import BuildOptions, build, merge
from builder.verify import check
from rafs.errors import BuildError
from rafs.mapped import open_bootstrap
from tests.builder.common import build_layers, unpacked, write_layers
from tests.conftest import run_console
from tests.reference import Entry, apply_layers, diff, snapshot_tree, whiteout

CHUNK = 0x1000
BASE = [
    Entry("", "dir", 0o755),
    Entry("d", "dir", 0o755),
    Entry("d/f", "file", 0o644, data=b"shared data\n" * 100),
    Entry("outside", "hardlink", target="d/f"),
]
UPPERS = {
    "link into the lower layer": [Entry("new-link", "hardlink", target="d/f")],
    "a file replaces the directory holding the target": [Entry("d", "file", 0o600, data=b"now a file\n")],
    "the directory holding the target is whited out": [whiteout("d")],
    "the target itself is whited out": [whiteout("d/f")],
}


def _nlink(bootstrap: str, path: bytes) -> int:
    opened = open_bootstrap(bootstrap)
    ino = opened.resolve(path)
    assert ino is not None, path
    return opened.inode(ino).nlink


@pytest.mark.parametrize("case", sorted(UPPERS))
def test_link_groups_across_layers(tmp_path: Path, case: str) -> None:
    layers = [BASE, UPPERS[case]]
    paths = write_layers(str(tmp_path), layers)
    bootstrap, blob_dir, _ = build_layers(str(tmp_path), paths, BuildOptions(chunk_size=CHUNK))
    check(open_bootstrap(bootstrap), blob_dir)
    as_directory, as_tar = unpacked(str(tmp_path), bootstrap, blob_dir)
    expected = snapshot_tree(apply_layers(layers))
    assert diff(expected, as_directory) == []
    assert diff(expected, as_tar) == []
    if case == "link into the lower layer":
        assert _nlink(bootstrap, b"/new-link") == 3
        assert os.stat(tmp_path / "unpacked" / "new-link").st_ino == os.stat(tmp_path / "unpacked" / "d" / "f").st_ino
    else:  # the other name survives as a file of its own, with its content
        assert _nlink(bootstrap, b"/outside") == 1
        assert (tmp_path / "unpacked" / "outside").read_bytes() == b"shared data\n" * 100


@pytest.mark.parametrize("case", sorted(set(UPPERS) - {"link into the lower layer"}))
def test_merge_of_layer_bootstraps_keeps_the_surviving_name(tmp_path: Path, case: str) -> None:
    paths = write_layers(str(tmp_path), [BASE, UPPERS[case]])
    blob_dir = str(tmp_path / "blobs")
    layer_bootstraps = []
    for number, path in enumerate(paths):
        layer_bootstraps.append(str(tmp_path / f"layer{number}.boot"))
        build("targz", [path], layer_bootstraps[-1], blob_dir, BuildOptions(chunk_size=CHUNK, keep_whiteouts=True))
    merged = str(tmp_path / "merged.boot")
    merge(layer_bootstraps, merged)
    check(open_bootstrap(merged), blob_dir)
    whole, _, _ = build_layers(str(tmp_path), paths, BuildOptions(chunk_size=CHUNK), name="whole")
    assert open_bootstrap(merged).superblock.root_digest == open_bootstrap(whole).superblock.root_digest
    assert _nlink(merged, b"/outside") == 1


def test_layer_bootstrap_refuses_a_link_into_a_lower_layer(tmp_path: Path) -> None:
    paths = write_layers(str(tmp_path), [BASE, UPPERS["link into the lower layer"]])
    completed = run_console(
        "nydus-image",
        ["create", "--layer", "-t", "targz", "-B", str(tmp_path / "l.boot"), "-D", str(tmp_path / "b"), paths[1]],
    )
    assert completed.returncode == BuildError.exit_code
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "new-link" in lines[0] and "d/f" in lines[0] and "build the layers together" in lines[0]
    assert not (tmp_path / "l.boot").exists()
