"""`create --layer` per layer then `merge` gives the same image as building the stack at once."""

from __future__ import annotations

import os
import tempfile

from hypothesis import given

from builder.build import BuildOptions, build, merge
from builder.verify import check
from rafs.mapped import open_bootstrap
from tests.builder.common import build_layers, unpacked, write_layers
from tests.reference import Entry, apply_layers, diff, snapshot_tree
from tests.strategies import chunk_sizes, layer_stacks


@given(layers=layer_stacks(), chunk_size=chunk_sizes)
def test_merged_layer_bootstraps_equal_whole_build(layers: list[list[Entry]], chunk_size: int) -> None:
    expected = snapshot_tree(apply_layers(layers))
    with tempfile.TemporaryDirectory() as directory:
        paths = write_layers(directory, layers, ["gzip", "zstd", "none"])
        blob_dir = os.path.join(directory, "blobs")
        layer_bootstraps = []
        for number, path in enumerate(paths):
            layer_bootstrap = os.path.join(directory, f"layer{number}.boot")
            build("targz", [path], layer_bootstrap, blob_dir, BuildOptions(chunk_size=chunk_size, keep_whiteouts=True))
            layer_bootstraps.append(layer_bootstrap)
        merged = os.path.join(directory, "merged.boot")
        result = merge(layer_bootstraps, merged)
        assert result.layers == len(layers)
        check(open_bootstrap(merged), blob_dir)
        as_directory, as_tar = unpacked(directory, merged, blob_dir)
        whole, _, _ = build_layers(directory, paths, BuildOptions(chunk_size=chunk_size), name="whole")
        merged_root = open_bootstrap(merged).superblock.root_digest
        whole_root = open_bootstrap(whole).superblock.root_digest
    assert diff(expected, as_directory) == []
    assert diff(expected, as_tar) == []
    assert merged_root == whole_root
