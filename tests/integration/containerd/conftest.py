"""Fixtures: one registry with the example image (plain OCI and converted) per module, and a
fresh containerd + snapshotter per test, stopped with everything they started."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.containerd.rig import REPO, Example, Rig, make_rig, mounts_below, push_layout
from tests.registry_fixture import start_registry


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Example]:
    base = tmp_path_factory.mktemp("containerd-example")
    registry = start_registry(base / "registry")
    try:
        subprocess.run([sys.executable, "examples/make_example.py", str(base / "example")], cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
        layout = base / "example" / "oci"
        oci = push_layout(registry.host, layout, "example", "oci")
        nydus = f"{registry.host}/example:nydus"
        converted = subprocess.run(
            [sys.executable, "-m", "builder.nydusify", "convert", "--source", f"oci:{layout}:latest", "--target", nydus,
             "--work-dir", str(base / "convert")],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert converted.returncode == 0, converted.stderr
        yield Example(registry, str(oci), nydus, layout)
    finally:
        registry.stop()


@pytest.fixture
def rig_factory() -> Iterator[Callable[..., Rig]]:
    """`rig_factory(daemon_mode=..., metrics=..., cri=...)`: containerd and the snapshotter, started;
    each stopped with everything it started when the test ends. Under a short directory of its
    own: unix socket paths (nydusd's API below the snapshotter's root) must fit in 107 bytes."""
    rigs: list[Rig] = []
    base = Path(tempfile.mkdtemp(prefix="nysnap-", dir="/tmp"))

    def factory(**options: Any) -> Rig:
        started = make_rig(base / f"rig{len(rigs)}", **options)
        rigs.append(started)
        started.snapshotter.start()
        started.containerd.start()
        return started

    try:
        yield factory
    finally:
        try:
            for started in rigs:
                started.stop()
        finally:
            if not mounts_below(str(base)):  # never delete through a mount left behind
                shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def rig(rig_factory: Callable[..., Rig]) -> Rig:
    """containerd and a dedicated-mode snapshotter, started."""
    return rig_factory()
