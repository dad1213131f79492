"""`nydusd --trace-out`: files in first-access order, fed back to `nydus-image create --prefetch-files`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rafs.mapped import open_bootstrap
from tests.daemon.images import build_image, synthetic_tree
from tests.daemon.nydusd import mounted, requires_fuse, write_config

pytestmark = [pytest.mark.fuse, requires_fuse]


def test_trace_lists_first_accesses_and_builds_a_prefetch_table(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    image = build_image(synthetic_tree(str(tmp_path / "src"), files=8), str(tmp_path / "image"), chunk_size=0x10000)
    config = write_config(str(tmp_path / "c.json"), image.blob_dir)
    trace = tmp_path / "trace.txt"
    order = ["etc/passwd", "usr/lib/file005", "etc/passwd", "usr/lib/deep/er/still/zeros", "usr/lib/file005"]
    extra = ["--trace-out", str(trace)]
    with mounted(image.bootstrap, str(tmp_path / "mnt"), config, str(tmp_path / "log"), extra=extra) as daemon:
        os.listdir(daemon.mountpoint)  # metadata only: not traced
        os.stat(os.path.join(daemon.mountpoint, "etc/owned"))
        for path in order:
            Path(daemon.mountpoint, path).read_bytes()
        traced_while_mounted = trace.read_text()
    expected = "/etc/passwd\n/usr/lib/file005\n/usr/lib/deep/er/still/zeros\n"
    assert traced_while_mounted == expected  # flushed as it goes
    assert trace.read_text() == expected

    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    cli(
        "nydus-image",
        ["create", "--bootstrap", str(rebuilt / "image.boot"), "--blob-dir", str(rebuilt / "blobs"),
         "--chunk-size", "0x10000", "--prefetch-files", str(trace), str(tmp_path / "src")],
        check=True,
    )  # fmt: skip
    bootstrap = open_bootstrap(rebuilt / "image.boot")
    table = bootstrap.prefetch_inodes()
    assert table == [bootstrap.resolve(line) for line in expected.splitlines()]
