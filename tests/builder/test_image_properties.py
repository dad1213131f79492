"""Determinism, dedup, prefetch ordering and chunk-dict dedup of built images."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from builder.build import BuildOptions
from builder.verify import check
from rafs import layout
from rafs.mapped import open_bootstrap
from rafs.pathlist import PrefetchEntry
from tests.builder.common import build_layers, write_layers
from tests.conftest import run_console
from tests.reference import Entry
from tests.strategies import layer_stacks

CHUNK = 0x1000


def _random(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _blob_files(blob_dir: str) -> dict[str, bytes]:
    return {name: (Path(blob_dir) / name).read_bytes() for name in sorted(os.listdir(blob_dir))}


@settings(max_examples=10)
@given(layers=layer_stacks(max_layers=3, max_entries=12))
def test_same_input_gives_identical_bootstrap_and_blobs(layers: list[list[Entry]]) -> None:
    layers = [*layers, [Entry("big", "file", 0o600, data=_random(1, 5 * CHUNK + 17))]]
    with tempfile.TemporaryDirectory() as directory:
        paths = write_layers(directory, layers, ["gzip", "zstd", "none"])
        results = []
        for attempt in ("first", "second"):
            os.mkdir(os.path.join(directory, attempt))
            bootstrap, blob_dir, _ = build_layers(
                os.path.join(directory, attempt), paths, BuildOptions(chunk_size=CHUNK)
            )
            results.append((Path(bootstrap).read_bytes(), _blob_files(blob_dir)))
    assert results[0] == results[1]
    assert results[0][1]  # at least one blob, named by its sha256
    assert all(len(name) == 64 for name in results[0][1])


def test_repeated_file_is_stored_once(tmp_path: Path) -> None:
    content = _random(2, 3 * CHUNK)
    layers = [
        [Entry("a", "file", data=content), Entry("unique", "file", data=_random(3, CHUNK))],
        [Entry("b", "file", data=content), Entry("c", "file", data=content + content[:100])],
    ]
    paths = write_layers(str(tmp_path), layers)
    bootstrap, blob_dir, result = build_layers(
        str(tmp_path), paths, BuildOptions(chunk_size=CHUNK, compressor=layout.COMPRESSOR_NONE)
    )
    figures = json.loads(run_console("nydus-image", ["stat", "-B", bootstrap, "--json"], check=True).stdout)
    assert figures["chunk_references"] == 3 + 1 + 3 + 4
    assert figures["unique_chunks"] == 3 + 1 + 1  # the 100-byte tail of "c" is new
    assert figures["stored_uncompressed_bytes"] == 4 * CHUNK + 100
    assert figures["logical_bytes"] == 3 * CHUNK + CHUNK + 3 * CHUNK + 3 * CHUNK + 100
    assert result.deduplicated_chunks == 6
    blob_sizes = sorted(os.path.getsize(os.path.join(blob_dir, name)) for name in os.listdir(blob_dir))
    assert blob_sizes == [100, 4 * CHUNK]  # compressor none: stored bytes are the chunks
    assert sorted(blob["compressed_size"] for blob in figures["blobs"]) == blob_sizes
    check(open_bootstrap(bootstrap), blob_dir)


def test_prefetch_files_come_first_in_list_order(tmp_path: Path) -> None:
    files = {name: _random(seed, 2 * CHUNK + seed) for seed, name in enumerate(["a", "b", "c", "d", "e"], 10)}
    layers = [[Entry("dir", "dir"), *(Entry(f"dir/{name}", "file", data=data) for name, data in files.items())]]
    paths = write_layers(str(tmp_path), layers)
    prefetch = tmp_path / "prefetch.txt"
    prefetch.write_text("# hot files\n/dir/d\ndir/b\n\n/dir/missing\n")
    bootstrap_path = str(tmp_path / "image.boot")
    blob_dir = str(tmp_path / "blobs")
    run_console(
        "nydus-image",
        [
            "create",
            "-t",
            "targz",
            "--chunk-size",
            hex(CHUNK),
            "-c",
            "none",
            "--prefetch-files",
            str(prefetch),
            "-B",
            bootstrap_path,
            "-D",
            blob_dir,
            *paths,
        ],
        check=True,
    )
    bootstrap = open_bootstrap(bootstrap_path)
    order = [bootstrap.resolve("/dir/d"), bootstrap.resolve("/dir/b")]
    assert bootstrap.prefetch_inodes() == order
    position = 0
    for ino in order:
        for chunk in bootstrap.chunks(ino):  # type: ignore[arg-type]
            assert chunk.compressed_offset == position
            position += chunk.compressed_size
    others = [bootstrap.resolve(f"/dir/{name}") for name in "ace"]
    assert all(chunk.compressed_offset >= position for ino in others for chunk in bootstrap.chunks(ino))  # type: ignore[arg-type]
    check(bootstrap, blob_dir)


def test_chunk_dict_dedups_against_another_image(tmp_path: Path) -> None:
    shared = _random(4, 4 * CHUNK)
    (tmp_path / "base").mkdir()
    base_paths = write_layers(str(tmp_path / "base"), [[Entry("lib", "file", data=shared)]])
    base_bootstrap, base_blobs, _ = build_layers(str(tmp_path / "base"), base_paths, BuildOptions(chunk_size=CHUNK))
    (tmp_path / "app").mkdir()
    new_data = _random(5, CHUNK)
    app_paths = write_layers(
        str(tmp_path / "app"), [[Entry("lib2", "file", data=shared), Entry("app", "file", data=new_data)]]
    )
    app_bootstrap, app_blobs, result = build_layers(
        str(tmp_path / "app"), app_paths, BuildOptions(chunk_size=CHUNK, chunk_dict=base_bootstrap)
    )
    base_blob_id = open_bootstrap(base_bootstrap).blobs[0].blob_id
    app = open_bootstrap(app_bootstrap)
    lib2 = app.chunks(app.resolve("/lib2"))  # type: ignore[arg-type]
    assert {app.blobs[chunk.blob_index].blob_id for chunk in lib2} == {base_blob_id}
    new_blob_ids = os.listdir(app_blobs)
    assert len(new_blob_ids) == 1 and new_blob_ids[0] != base_blob_id
    assert app.blobs[app.chunks(app.resolve("/app"))[0].blob_index].blob_id == new_blob_ids[0]  # type: ignore[arg-type]
    assert [blob.chunk_count for blob in app.blobs if blob.blob_id == new_blob_ids[0]] == [1]
    assert result.deduplicated_chunks == 4
    for name in os.listdir(base_blobs):
        os.link(os.path.join(base_blobs, name), os.path.join(app_blobs, name))
    check(app, app_blobs)


PREFETCH_FILES = {name: _random(seed, seed * CHUNK + 7) for seed, name in enumerate("abcd", 1)}  # 2-5 chunks
prefetch_lines = st.lists(
    st.tuples(
        st.sampled_from(sorted(PREFETCH_FILES)),
        st.one_of(st.none(), st.tuples(st.integers(0, 5 * CHUNK), st.integers(1, 2 * CHUNK))),
    ),
    max_size=10,
)


@settings(max_examples=15)
@given(lines=prefetch_lines)
def test_prefetch_ranges_order_the_chunk_table_and_the_blob_head(
    lines: list[tuple[str, tuple[int, int] | None]],
) -> None:
    entries = tuple(
        PrefetchEntry(f"/dir/{name}".encode())
        if span is None
        else PrefetchEntry(f"/dir/{name}".encode(), span[0], span[0] + span[1])
        for name, span in lines
    )
    # The model: each chunk named at its first line, a whole file naming all of its chunks.
    chunk_counts = {name: -(-len(data) // CHUNK) for name, data in PREFETCH_FILES.items()}
    expected: list[tuple[str, int]] = []
    for (name, _), entry in zip(lines, entries, strict=True):
        for index in entry.chunk_indexes(CHUNK, chunk_counts[name]):
            if (name, index) not in expected:
                expected.append((name, index))
    with tempfile.TemporaryDirectory() as directory:
        layers = [
            [Entry("dir", "dir"), *(Entry(f"dir/{name}", "file", data=data) for name, data in PREFETCH_FILES.items())]
        ]
        paths = write_layers(directory, layers)
        options = BuildOptions(chunk_size=CHUNK, compressor=layout.COMPRESSOR_NONE, prefetch_files=entries)
        bootstrap_path, blob_dir, _ = build_layers(directory, paths, options)
        bootstrap = open_bootstrap(bootstrap_path)
        ino = {name: bootstrap.resolve(f"/dir/{name}".encode()) or 0 for name in PREFETCH_FILES}
        by_ranges = any(entry.end is not None for entry in entries)
        assert bootstrap.prefetch_chunks() == ([(ino[name], index) for name, index in expected] if by_ranges else [])
        first_of: dict[str, int] = {}
        for position, (name, _) in enumerate(lines):
            first_of.setdefault(name, position)
        assert bootstrap.prefetch_inodes() == [ino[name] for name in sorted(first_of, key=first_of.__getitem__)]
        # Listed chunks head the blob in list order, every other chunk after them.
        offset = {
            (name, k): chunk.compressed_offset
            for name in PREFETCH_FILES
            for k, chunk in enumerate(bootstrap.chunks(ino[name]))
        }
        listed = [offset[key] for key in expected]
        assert listed == sorted(listed)
        unlisted = [where for key, where in offset.items() if key not in expected]
        assert all(where > max(listed, default=-1) for where in unlisted)
        check(bootstrap, blob_dir)
