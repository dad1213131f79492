"""The README's first command does what the README says, end to end (after installing).

`scripts/quickstart.sh` builds the example, converts it into a registry on loopback and runs a
container on it lazily; the container's output and the share of the image it fetched are read
from what the script prints.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.daemon.nydusd import REPO, requires_fuse

pytestmark = [
    pytest.mark.slow,
    pytest.mark.fuse,
    requires_fuse,
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc"),
    pytest.mark.skipif(shutil.which("docker-registry") is None, reason="needs docker-registry"),
]


def test_quickstart_runs_the_example_lazily(tmp_path: Path) -> None:
    environment = {**os.environ, "NYDUS_SKIP_INSTALL": "1", "WORK_DIR": str(tmp_path / "work")}
    completed = subprocess.run(
        ["bash", "scripts/quickstart.sh"], cwd=REPO, env=environment, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "hello from a lazily loaded image" in completed.stdout
    assert 'NAME="nydus-py example"' in completed.stdout
    share = re.search(r"\(([0-9.]+)% of the image\)", completed.stdout)
    assert share is not None, completed.stdout[-2000:]
    # something was fetched (the script counts the cache's own data files), and the 48 MiB the
    # workload never reads stayed in the registry
    assert 0.0 < float(share.group(1)) < 10.0
    with open("/proc/mounts") as mounts:
        left_mounted = [line for line in mounts if str(tmp_path) in line]
    assert left_mounted == []  # the daemon, the overlay and the container are all gone
