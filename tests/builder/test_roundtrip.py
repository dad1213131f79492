"""Round trip: layers -> build -> unpack equals the reference overlay of the same layers."""

from __future__ import annotations

import tempfile

from hypothesis import given
from hypothesis import strategies as st

from builder.build import BuildOptions
from tests.builder.common import build_layers, unpacked, write_layers
from tests.reference import Entry, apply_layers, diff, snapshot_tree
from tests.strategies import chunk_sizes, compressions, layer_stacks


@given(layers=layer_stacks(), chunk_size=chunk_sizes, compression=st.lists(compressions, min_size=1, max_size=3))
def test_unpacked_build_equals_reference(layers: list[list[Entry]], chunk_size: int, compression: list[str]) -> None:
    expected = snapshot_tree(apply_layers(layers))
    with tempfile.TemporaryDirectory() as directory:
        paths = write_layers(directory, layers, compression)
        bootstrap, blob_dir, _ = build_layers(directory, paths, BuildOptions(chunk_size=chunk_size))
        as_directory, as_tar = unpacked(directory, bootstrap, blob_dir)
    assert diff(expected, as_directory) == []
    assert diff(expected, as_tar) == []
