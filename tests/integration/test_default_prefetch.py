"""A bootstrap's prefetch table is fetched at mount with the default config (no `fs_prefetch`
key), as nydus-snapshotter's default config does; `fs_prefetch.enable: false` turns it off.
`nydusd --timeline-out` writes what the mount did, and a path it cannot write is refused first."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from builder.build import BuildOptions, build
from rafs import layout
from rafs.mapped import open_bootstrap
from rafs.pathlist import whole_files
from tests.daemon.nydusd import NYDUSD, cached_chunks, mounted, requires_fuse, write_config

pytestmark = requires_fuse
CHUNK = 64 * 1024
LISTED = (b"/app/first", b"/app/second")


@pytest.fixture
def image(tmp_path: Path) -> tuple[str, str]:
    source = tmp_path / "src"
    (source / "app").mkdir(parents=True)
    rng = random.Random(9)
    for name in ("first", "second", "unlisted", "other"):
        (source / "app" / name).write_bytes(rng.randbytes(5 * CHUNK + 100))
    bootstrap, blob_dir = str(tmp_path / "image.boot"), str(tmp_path / "blobs")
    options = BuildOptions(chunk_size=CHUNK, compressor=layout.COMPRESSOR_NONE, prefetch_files=whole_files(LISTED))
    build("directory", [str(source)], bootstrap, blob_dir, options)
    return bootstrap, blob_dir


def test_the_prefetch_table_is_fetched_with_the_default_config(image: tuple[str, str], tmp_path: Path) -> None:
    bootstrap, blob_dir = image
    assert len(open_bootstrap(bootstrap).prefetch_inodes()) == len(LISTED)
    work_dir = str(tmp_path / "cache")
    config = write_config(str(tmp_path / "c.json"), blob_dir, work_dir)  # no fs_prefetch at all
    with mounted(bootstrap, str(tmp_path / "mnt"), config, str(tmp_path / "log")) as daemon:
        daemon.wait_for_log("prefetch done")
        assert cached_chunks(work_dir) == 2 * 6, "the two listed files, all six chunks each, and nothing else"


def test_prefetch_can_be_turned_off(image: tuple[str, str], tmp_path: Path) -> None:
    bootstrap, blob_dir = image
    work_dir = str(tmp_path / "cache")
    no_readahead = {"whole_file_max": 0, "window_max": 0}
    config = write_config(
        str(tmp_path / "c.json"),
        blob_dir,
        work_dir,
        fs_prefetch={"enable": False},
        amplify_io=0,
        readahead=no_readahead,
    )
    with mounted(bootstrap, str(tmp_path / "mnt"), config, str(tmp_path / "log")) as daemon:
        with open(os.path.join(daemon.mountpoint, "app", "other"), "rb") as file:
            file.read(10)  # a read: the daemon is serving, and has had every chance to prefetch
        time.sleep(0.5)
        assert "prefetch:" not in daemon.log() and "prefetch done" not in daemon.log()
    assert cached_chunks(work_dir) == 1, "only the chunk that was read"


def test_timeline_out_records_the_reads_and_the_requests(image: tuple[str, str], tmp_path: Path) -> None:
    bootstrap, blob_dir = image
    timeline = tmp_path / "timeline.json"
    config = write_config(str(tmp_path / "c.json"), blob_dir, str(tmp_path / "cache"), fs_prefetch={"enable": False})
    extra = ["--timeline-out", str(timeline)]
    with mounted(bootstrap, str(tmp_path / "mnt"), config, str(tmp_path / "log"), extra=extra) as daemon:
        with open(os.path.join(daemon.mountpoint, "app", "other"), "rb") as file:
            data = file.read()
        assert not timeline.exists(), "written at unmount, not before"
    record = json.loads(timeline.read_text())
    assert record["started_at"] <= record["mounted_at"] <= record["first_read_at"]
    assert sum(size for _, _, _, size in record["reads"]) == record["fuse_read_bytes"] >= len(data)
    assert record["requests"] and all(request["ok"] for request in record["requests"])
    assert sum(request["bytes"] for request in record["requests"]) >= len(data)  # stored uncompressed
    assert record["cpu_s"] > 0


def test_timeline_out_in_a_missing_directory_is_refused_in_one_line(image: tuple[str, str], tmp_path: Path) -> None:
    bootstrap, blob_dir = image
    config = write_config(str(tmp_path / "c.json"), blob_dir)
    completed = subprocess.run(
        [*NYDUSD, "--bootstrap", bootstrap, "--mountpoint", str(tmp_path / "mnt"), "--config", config,
         "--timeline-out", str(tmp_path / "missing" / "t.json")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [completed.stderr.strip().splitlines()[-1]]
    assert "timeline-out" in completed.stderr and "Traceback" not in completed.stderr
