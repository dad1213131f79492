"""Fixtures: one registry with the example image (plain OCI and converted) per module, and a
fresh containerd + snapshotter per test, stopped with everything they started."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.containerd.rig import REPO, Example, Rig, make_rig, push_layout
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
def rig(tmp_path: Path) -> Iterator[Rig]:
    """containerd and a dedicated-mode snapshotter, started."""
    started = make_rig(tmp_path / "rig")
    try:
        started.snapshotter.start()
        started.containerd.start()
        yield started
    finally:
        started.stop()
