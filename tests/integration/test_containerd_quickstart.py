"""`scripts/containerd-quickstart.sh` does what the README's containerd section says: a lazy
rpull (only manifest, config and bootstrap fetched), a container that prints the right things,
a small share of the blobs in the chunk cache, and nothing left running or mounted."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.nydusd import REPO
from tests.integration.containerd.rig import mounts_below, processes_naming, requires_containerd

pytestmark = [pytest.mark.slow, pytest.mark.fuse, requires_containerd]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A work directory with a short path: the daemons' unix sockets live below it (107 bytes at most)."""
    path = Path(tempfile.mkdtemp(prefix="nyqs-", dir="/tmp"))
    try:
        yield path
    finally:
        if not mounts_below(str(path)):
            shutil.rmtree(path, ignore_errors=True)


def test_containerd_quickstart_pulls_lazily_and_runs(short_dir: Path) -> None:
    work = short_dir / "work"
    environment = {**os.environ, "NYDUS_SKIP_INSTALL": "1", "WORK_DIR": str(work)}
    completed = subprocess.run(
        ["bash", "scripts/containerd-quickstart.sh"], cwd=REPO, env=environment, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "hello from a lazily loaded image" in completed.stdout
    assert 'NAME="nydus-py example"' in completed.stdout
    fetched = re.findall(r"^fetching sha256:\S+ (\S+)$", completed.stdout, re.MULTILINE)
    assert sorted(fetched) == sorted([
        "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.config.v1+json",
        "application/vnd.oci.image.layer.v1.tar+gzip",
    ])  # fmt: skip
    share = re.search(r"\(([0-9.]+)%\)", completed.stdout)
    assert share is not None and float(share.group(1)) < 10.0
    assert mounts_below(str(work)) == [] and processes_naming(str(work)) == []
