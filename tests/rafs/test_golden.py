"""Golden bytes: a small bootstrap and its blob, committed, read back by every run.

They were built once (`python -m tests.rafs.test_golden` rebuilds them, which is only right
when the format's version changes on purpose). A change to the format that would break images
already pushed fails here: the committed bytes must still open, verify to the recorded root
digest, and give back exactly the recorded files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from builder.build import BuildOptions, build
from builder.verify import BlobFiles, check
from rafs import layout
from rafs.bootstrap import Bootstrap
from rafs.mapped import open_bootstrap

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
MTIME_NS = 1_600_000_000_250_000_000


def source_tree(root: Path) -> None:
    """What the golden image was built from: small, fixed, and with every kind of metadata."""
    (root / "etc").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "etc/hostname").write_bytes(b"golden\n")
    (root / "bin/tool").write_bytes(bytes(range(256)) * 40)  # 10 KiB: three 4 KiB chunks
    (root / "etc/zeros").write_bytes(bytes(5000))
    os.chmod(root / "bin/tool", 0o755)
    os.symlink("../bin/tool", root / "etc/tool-link")
    os.link(root / "etc/hostname", root / "etc/hostname-again")
    os.setxattr(root / "etc/hostname", "user.origin", b"golden")
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)
    os.utime(root, ns=(MTIME_NS, MTIME_NS))


def describe(bootstrap_path: Path, blob_dir: Path) -> dict[str, object]:
    """What the committed image holds: the root digest, the blob, and per path its metadata and sha256."""
    bootstrap = open_bootstrap(str(bootstrap_path))
    report = check(bootstrap, str(blob_dir))
    files: dict[str, dict[str, object]] = {}
    for path, ino in bootstrap.walk():
        inode = bootstrap.inode(ino)
        entry: dict[str, object] = {"mode": inode.mode, "size": inode.size, "mtime_ns": inode.mtime_ns}
        if inode.is_reg:
            content = b"".join(_read(bootstrap, blob_dir, ino))
            entry["sha256"] = hashlib.sha256(content).hexdigest()
        if inode.is_symlink:
            entry["target"] = os.fsdecode(bootstrap.readlink(ino))
        xattrs = bootstrap.xattrs(ino)
        if xattrs:
            entry["xattrs"] = {os.fsdecode(k): v.decode() for k, v in sorted(xattrs.items())}
        files[os.fsdecode(path)] = entry
    return {
        "format_version": layout.VERSION,
        "root_digest": report.root_digest,
        "blobs": [blob.blob_id for blob in bootstrap.blobs],
        "files": files,
    }


def _read(bootstrap: Bootstrap, blob_dir: Path, ino: int) -> list[bytes]:
    files = BlobFiles(bootstrap, str(blob_dir))
    try:
        return list(files.iter_file(ino))
    finally:
        files.close()


def test_committed_image_reads_back_as_recorded() -> None:
    recorded = json.loads((GOLDEN / "golden.json").read_text())
    assert describe(GOLDEN / "image.boot", GOLDEN / "blobs") == recorded
    assert len(recorded["files"]) == 8 and recorded["blobs"]


def test_committed_image_is_what_the_builder_makes_today(tmp_path: Path) -> None:
    """Same source, same options: same root digest (the builder is deterministic and the
    committed image is not a stale one built from something else)."""
    source_tree(tmp_path / "src")
    build("directory", [str(tmp_path / "src")], str(tmp_path / "image.boot"), str(tmp_path / "blobs"), OPTIONS)
    recorded = json.loads((GOLDEN / "golden.json").read_text())
    assert describe(tmp_path / "image.boot", tmp_path / "blobs")["root_digest"] == recorded["root_digest"]


OPTIONS = BuildOptions(chunk_size=0x1000)


def write_golden() -> None:
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "src"
        source_tree(source)
        shutil.rmtree(GOLDEN, ignore_errors=True)
        GOLDEN.mkdir(parents=True)
        build("directory", [str(source)], str(GOLDEN / "image.boot"), str(GOLDEN / "blobs"), OPTIONS)
    recorded = describe(GOLDEN / "image.boot", GOLDEN / "blobs")
    (GOLDEN / "golden.json").write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    write_golden()
    sys.exit(0)
