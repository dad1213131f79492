"""Round trip: layers -> build -> unpack equals the reference overlay of the same layers."""

from __future__ import annotations

import os
import tempfile
from unittest import mock

from hypothesis import assume, given
from hypothesis import strategies as st

from builder import blobs
from builder.build import BuildOptions, build
from builder.verify import check
from rafs.blob import COMPRESSORS_BY_NAME, DIGESTERS_BY_NAME
from rafs.mapped import open_bootstrap
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


@given(
    layers=layer_stacks(),
    chunk_size=chunk_sizes,
    compressor=st.sampled_from(sorted(COMPRESSORS_BY_NAME)),
    digester=st.sampled_from(sorted(DIGESTERS_BY_NAME)),
)
def test_every_compressor_and_digester_round_trips(
    layers: list[list[Entry]], chunk_size: int, compressor: str, digester: str
) -> None:
    expected = snapshot_tree(apply_layers(layers))
    options = BuildOptions(
        chunk_size=chunk_size, compressor=COMPRESSORS_BY_NAME[compressor], digester=DIGESTERS_BY_NAME[digester]
    )
    with tempfile.TemporaryDirectory() as directory:
        paths = write_layers(directory, layers, ["gzip"])
        bootstrap, blob_dir, _ = build_layers(directory, paths, options)
        opened = open_bootstrap(bootstrap)
        check(opened, blob_dir)
        assert opened.digester == DIGESTERS_BY_NAME[digester]
        assert {blob.compressor for blob in opened.blobs} <= {COMPRESSORS_BY_NAME[compressor]}
        as_directory, as_tar = unpacked(directory, bootstrap, blob_dir)
    assert diff(expected, as_directory) == []
    assert diff(expected, as_tar) == []


@given(layers=layer_stacks(max_layers=4), chunk_size=chunk_sizes, data=st.data())
def test_parent_bootstrap_then_upper_layers_equals_whole_build(
    layers: list[list[Entry]], chunk_size: int, data: st.DataObject
) -> None:
    """`create --parent-bootstrap LOWER.boot UPPER...` gives the image of building every layer at once."""
    assume(len(layers) >= 2)
    split = data.draw(st.integers(1, len(layers) - 1), label="layers in the parent")
    with tempfile.TemporaryDirectory() as directory:
        paths = write_layers(directory, layers, ["gzip", "zstd", "none"])
        options = BuildOptions(chunk_size=chunk_size)
        whole, _, _ = build_layers(directory, paths, options, name="whole")
        parent, blob_dir, _ = build_layers(directory, paths[:split], options, name="parent")
        child = os.path.join(directory, "child.boot")
        child_options = BuildOptions(chunk_size=chunk_size, parent_bootstrap=parent)
        build("targz", paths[split:], child, blob_dir, child_options)
        check(open_bootstrap(child), blob_dir)
        assert open_bootstrap(child).superblock.root_digest == open_bootstrap(whole).superblock.root_digest
        as_directory, _ = unpacked(directory, child, blob_dir)
    assert diff(snapshot_tree(apply_layers(layers)), as_directory) == []


@given(
    layers=layer_stacks(),
    chunk_size=chunk_sizes,
    compressor=st.sampled_from(sorted(COMPRESSORS_BY_NAME)),
    threads=st.integers(2, 4),
)
def test_compressing_in_threads_writes_what_one_thread_writes(
    layers: list[list[Entry]], chunk_size: int, compressor: str, threads: int
) -> None:
    """Compressed in worker threads, every chunk keeps its own stored bytes and flag: the same outputs as one thread."""
    options = BuildOptions(chunk_size=chunk_size, compressor=COMPRESSORS_BY_NAME[compressor])
    outputs = []
    with tempfile.TemporaryDirectory() as directory:
        paths = write_layers(directory, layers, ["gzip"])
        for count in (1, threads):
            with (
                mock.patch.object(blobs, "COMPRESS_THREADS", count),
                mock.patch.object(blobs, "MAX_PENDING_CHUNKS", count),
            ):
                bootstrap, blob_dir, _ = build_layers(directory, paths, options, name=f"threads-{count}")
            with open(bootstrap, "rb") as file:
                written = {"bootstrap": file.read()}
            for name in sorted(os.listdir(blob_dir)):
                with open(os.path.join(blob_dir, name), "rb") as file:
                    written[name] = file.read()
            outputs.append(written)
    assert outputs[0] == outputs[1]
