"""A real image: Debian packages as layers, built, checked, unpacked and compared with dpkg's tree.

The .debs are fetched once with `apt-get download` into $NYDUS_TEST_DEBS (default
/tmp/nydus-test-debs) and reused; the test skips, saying why, when they cannot be had.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.builder.common import write_oci_layout
from tests.conftest import run_console
from tests.reference import diff, snapshot_directory, walk_directory

PACKAGES = ("base-files", "busybox-static", "libc6")
CACHE = Path(os.environ.get("NYDUS_TEST_DEBS", "/tmp/nydus-test-debs"))


def _debs() -> list[Path]:
    CACHE.mkdir(parents=True, exist_ok=True)
    found = {name: sorted(CACHE.glob(f"{name}_*.deb")) for name in PACKAGES}
    missing = [name for name, paths in found.items() if not paths]
    if missing:
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            pytest.skip("apt-get and dpkg-deb are needed to fetch and unpack Debian packages")
        completed = subprocess.run(
            ["apt-get", "download", *missing], cwd=CACHE, capture_output=True, text=True, timeout=300
        )
        if completed.returncode != 0:
            pytest.skip(f"apt-get download {' '.join(missing)} failed: {completed.stderr.strip()[-300:]}")
        found = {name: sorted(CACHE.glob(f"{name}_*.deb")) for name in PACKAGES}
    return [found[name][-1] for name in PACKAGES]


def _whole_seconds(tree: Path) -> None:
    """Round every mtime down to a second: tarfile.add records float mtimes, which lose ns."""
    for _relative, full in sorted(walk_directory(str(tree)), reverse=True):
        seconds = os.lstat(full).st_mtime_ns // 1_000_000_000 * 1_000_000_000
        os.utime(full, ns=(seconds, seconds), follow_symlinks=False)


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """(the layers extracted one over another by tarfile, one tar.gz layer per package)."""
    work = tmp_path_factory.mktemp("debian")
    combined = work / "rootfs"
    combined.mkdir()
    layers = []
    for deb in _debs():
        name = deb.name.split("_")[0]
        tree = work / name
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        _whole_seconds(tree)
        layer = work / f"{name}.tar.gz"
        with tarfile.open(layer, "w:gz", format=tarfile.PAX_FORMAT) as archive:
            archive.add(tree, arcname=".")
        with tarfile.open(layer) as archive:
            archive.extractall(combined, numeric_owner=True, filter="fully_trusted")
            for member in archive.getmembers():  # tarfile leaves symlinks at the extraction time
                if member.issym():
                    mtime_ns = int(member.mtime) * 1_000_000_000
                    os.utime(combined / member.name, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
        layers.append(str(layer))
    return combined, layers


def nydus_image(*arguments: str) -> str:
    return run_console("nydus-image", list(arguments), check=True).stdout


def test_debian_layers_build_check_and_unpack_to_the_dpkg_tree(debian: tuple[Path, list[str]], tmp_path: Path) -> None:
    combined, layers = debian
    bootstrap, blobs = str(tmp_path / "image.boot"), str(tmp_path / "blobs")
    nydus_image("create", "-t", "targz", "-B", bootstrap, "-D", blobs, *layers)
    nydus_image("check", "-B", bootstrap, "-D", blobs)
    nydus_image("unpack", "-B", bootstrap, "-D", blobs, "-o", str(tmp_path / "tree"))
    expected = snapshot_directory(str(combined))
    assert len(expected) > 300  # a real tree: libc, busybox, /etc
    assert diff(expected, snapshot_directory(str(tmp_path / "tree")), ignore_root=True) == []
    assert Path(tmp_path / "tree" / "bin" / "busybox").stat().st_size > 500_000

    layout = write_oci_layout(str(tmp_path / "oci"), layers)
    from_oci = str(tmp_path / "oci.boot")
    nydus_image("create", "-t", "oci", "-B", from_oci, "-D", str(tmp_path / "oci-blobs"), layout)
    assert Path(from_oci).read_bytes() == Path(bootstrap).read_bytes()
    assert sorted(os.listdir(tmp_path / "oci-blobs")) == sorted(os.listdir(blobs))
