"""`nydus-image export --block`: the EROFS image, mounted by the kernel, is the image's tree."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import given, settings

from builder.build import BuildOptions
from builder.export import export_block
from daemon.erofs_mount import mount_erofs, unmount
from rafs.mapped import open_bootstrap
from tests.builder.common import build_layers, write_layers
from tests.conftest import run_console
from tests.reference import Entry, apply_layers, diff, snapshot_directory, snapshot_tree
from tests.strategies import chunk_sizes, layer_stacks


@contextmanager
def mounted(image: str, directory: str) -> Iterator[str]:
    target = os.path.join(directory, "mnt")
    os.mkdir(target)
    mount_erofs(image, target)
    try:
        yield target
    finally:
        unmount(target)


@settings(max_examples=40, deadline=None)
@given(layers=layer_stacks(max_layers=3, max_entries=10), chunk_size=chunk_sizes)
def test_exported_image_mounts_as_the_reference_tree(layers: list[list[Entry]], chunk_size: int) -> None:
    expected = snapshot_tree(apply_layers(layers))
    with tempfile.TemporaryDirectory() as directory:
        bootstrap, blob_dir, _ = build_layers(
            directory, write_layers(directory, layers), BuildOptions(chunk_size=chunk_size)
        )
        image = os.path.join(directory, "image.erofs")
        export_block(open_bootstrap(bootstrap), blob_dir, image)
        with mounted(image, directory) as root:
            actual = snapshot_directory(root)
    assert diff(expected, actual) == []


def big_directory_layers() -> list[list[Entry]]:
    """A directory of 700 entries (many blocks of them), names that sort before "." and "..",
    a multi-chunk file with a hole, a long symlink, a hard link."""
    many = [Entry("many", "dir")]
    many += [
        Entry(f"many/entry-{number:04}-{'x' * (number % 50)}", "file", data=bytes([number % 251 + 1]) * (number % 9))
        for number in range(700)
    ]
    return [
        [
            *many,
            Entry("-first", "file", data=b"dash"),
            Entry("big", "file", data=os.urandom(20000) + bytes(3 * 4096) + b"end"),
            Entry("long", "symlink", perm=0o777, target="t" * 3000),
            Entry("hard", "hardlink", target="-first"),
        ]
    ]


def test_export_command_writes_a_mountable_image(tmp_path: Path) -> None:
    layers = big_directory_layers()
    bootstrap, blob_dir, _ = build_layers(str(tmp_path), write_layers(str(tmp_path), layers))
    image = tmp_path / "image.erofs"
    result = run_console(
        "nydus-image", ["export", "--block", "-B", bootstrap, "-D", blob_dir, "-O", str(image)], check=True
    )
    assert f"{image}: EROFS image of {image.stat().st_size} bytes" in result.stdout
    # erofs-utils' checker (installed by scripts/install.sh) finds nothing wrong with it either
    checked = subprocess.run(["fsck.erofs", str(image)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    with mounted(str(image), str(tmp_path)) as root:
        actual = snapshot_directory(root)
        assert len(os.listdir(os.path.join(root, "many"))) == 700
    assert diff(snapshot_tree(apply_layers(layers)), actual) == []


def test_export_of_a_missing_blob_fails_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    layers = [[Entry("file", "file", data=b"some bytes")]]
    bootstrap, blob_dir, _ = build_layers(str(tmp_path), write_layers(str(tmp_path), layers))
    for name in os.listdir(blob_dir):
        os.remove(os.path.join(blob_dir, name))
    image = tmp_path / "image.erofs"
    result = run_console("nydus-image", ["export", "--block", "-B", bootstrap, "-D", blob_dir, "-O", str(image)])
    assert result.returncode == 3
    assert len(result.stderr.strip().splitlines()) == 1 and "is missing" in result.stderr
    assert os.listdir(tmp_path).count("image.erofs") == 0
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


def test_an_xattr_without_an_erofs_namespace_is_refused(tmp_path: Path) -> None:
    layers = [[Entry("file", "file", data=b"x", xattrs=(("system.nfs4_acl", b"value"),))]]
    bootstrap, blob_dir, _ = build_layers(str(tmp_path), write_layers(str(tmp_path), layers))
    image = tmp_path / "image.erofs"
    result = run_console("nydus-image", ["export", "--block", "-B", bootstrap, "-D", blob_dir, "-O", str(image)])
    assert result.returncode == 3
    assert "/file: xattr 'system.nfs4_acl' has no EROFS namespace" in result.stderr
    assert not image.exists()
