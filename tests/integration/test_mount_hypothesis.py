"""Hypothesis layer stacks, built and mounted for real: the mount equals the reference overlay.

The same generated stacks as the builder's round-trip test (whiteouts, opaque directories, hard
links, xattrs, devices, fifos, long and unicode names, empty and zero files), but read back
through nydusd's FUSE mount instead of `unpack`. Each example mounts a daemon, so the number of
examples follows the profile (`HYPOTHESIS_PROFILE=ci` runs more).
"""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import given

from builder.build import BuildOptions
from tests.builder.common import build_layers, write_layers
from tests.daemon.nydusd import mounted, requires_fuse, write_config
from tests.reference import Entry, apply_layers, diff, snapshot_directory, snapshot_tree
from tests.strategies import chunk_sizes, layer_stacks

pytestmark = [pytest.mark.fuse, requires_fuse]


@given(layers=layer_stacks(max_layers=3), chunk_size=chunk_sizes)
def test_mounted_build_equals_reference(layers: list[list[Entry]], chunk_size: int) -> None:
    expected = snapshot_tree(apply_layers(layers))
    with tempfile.TemporaryDirectory() as directory:
        paths = write_layers(directory, layers, ["gzip"])
        bootstrap, blob_dir, _ = build_layers(directory, paths, BuildOptions(chunk_size=chunk_size))
        config = write_config(os.path.join(directory, "nydusd.json"), blob_dir, os.path.join(directory, "cache"))
        mountpoint = os.path.join(directory, "mnt")
        with mounted(bootstrap, mountpoint, config, os.path.join(directory, "nydusd.log")):
            seen = snapshot_directory(mountpoint)
    # The mount's root is the mountpoint: its metadata comes from the image like any directory.
    assert diff(expected, seen) == []
