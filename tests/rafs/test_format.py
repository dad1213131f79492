"""The bootstrap format alone: write -> read round trip, chunk spans, and hostile bytes."""

from __future__ import annotations

import itertools
import os
import re
import stat
import struct
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from rafs import layout
from rafs.blob import decode_chunk
from rafs.bootstrap import Bootstrap
from rafs.digest import chunk_digest
from rafs.errors import CorruptBootstrap, CorruptChunk, RafsError, UnknownFeature, UnsupportedVersion
from rafs.mapped import open_bootstrap
from rafs.records import BlobRecord, ChunkRecord
from rafs.tree import FsNode, new_directory
from rafs.writer import write_bootstrap
from tests.strategies import ids, mtimes_ns, names, permissions

BLOB_IDS = [f"{number:064x}" for number in (1, 2, 3)]


def _zero_digest(length: int) -> bytes:
    """What the builder records for a chunk of zeros (and what the reader checks)."""
    return chunk_digest(bytes(length))


def _chunks_for(size: int, chunk_size: int, blob_count: int, draw: st.DrawFn) -> list[ChunkRecord]:
    records = []
    for file_offset in range(0, size, chunk_size):
        length = min(chunk_size, size - file_offset)
        zero = draw(st.booleans())
        records.append(
            ChunkRecord(
                blob_index=0 if zero else draw(st.integers(0, blob_count - 1)),
                flags=layout.CHUNK_ZERO if zero else draw(st.sampled_from([0, layout.CHUNK_COMPRESSED])),
                compressed_offset=0 if zero else draw(st.integers(0, 2**40)),
                compressed_size=0 if zero else draw(st.integers(1, length)),
                uncompressed_size=length,
                file_offset=file_offset,
                digest=_zero_digest(length) if zero else draw(st.binary(min_size=32, max_size=32)),
            )
        )
    return records


@st.composite
def trees(draw: st.DrawFn) -> tuple[FsNode, int, list[BlobRecord], list[FsNode]]:
    """A random tree with records as the builder would make them, its blobs and a prefetch list."""
    chunk_size = draw(st.sampled_from([0x1000, 0x4000, 0x100000]))
    blobs = [BlobRecord(blob_id, 10**9, 10**9, 100, layout.COMPRESSOR_ZSTD) for blob_id in BLOB_IDS]
    root = new_directory(draw(permissions), draw(ids), draw(ids), draw(mtimes_ns))
    directories: list[FsNode] = [root]
    files: list[FsNode] = []
    for _ in range(draw(st.integers(0, 25))):
        parent = draw(st.sampled_from(directories))
        name = draw(names).encode()
        if name in parent.children:
            continue
        kind = draw(st.sampled_from(["file", "dir", "symlink", "char", "fifo", "link"]))
        if kind == "link" and files:
            parent.children[name] = draw(st.sampled_from(files))
            continue
        node = FsNode(
            mode={"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "char": stat.S_IFCHR, "fifo": stat.S_IFIFO}.get(
                kind, stat.S_IFREG
            )
            | draw(permissions),
            uid=draw(ids),
            gid=draw(ids),
            mtime_ns=draw(mtimes_ns),
            xattrs=draw(st.dictionaries(st.binary(min_size=1, max_size=20), st.binary(max_size=50), max_size=3)),
        )
        if node.is_reg:
            node.size = draw(st.integers(0, 5 * chunk_size))
            node.chunks = _chunks_for(node.size, chunk_size, len(blobs), draw)
            files.append(node)
        elif node.is_symlink:
            node.symlink_target = draw(st.binary(min_size=1, max_size=300))
        elif stat.S_ISCHR(node.mode):
            node.rdev = os.makedev(draw(st.integers(0, 4095)), draw(st.integers(0, 2**20 - 1)))
        elif node.is_dir:
            directories.append(node)
        parent.children[name] = node
    prefetch = draw(st.lists(st.sampled_from(files), unique_by=id)) if files else []
    return root, chunk_size, blobs, prefetch


def _model_view(root: FsNode) -> dict[bytes, tuple[object, ...]]:
    view: dict[bytes, tuple[object, ...]] = {}
    stack = [(b"/", root)]
    while stack:
        path, node = stack.pop()
        view[path] = (
            node.mode,
            node.uid,
            node.gid,
            node.mtime_ns,
            node.size if node.is_reg else len(node.symlink_target) if node.is_symlink else 0,
            node.rdev,
            node.xattrs,
            node.symlink_target,
            tuple(node.chunks),
            sorted(node.children),
        )
        prefix = b"" if path == b"/" else path
        stack.extend((prefix + b"/" + name, child) for name, child in node.children.items())
    return view


def _bootstrap_view(bootstrap: Bootstrap) -> dict[bytes, tuple[object, ...]]:
    view: dict[bytes, tuple[object, ...]] = {}
    for path, ino in bootstrap.walk():
        inode = bootstrap.inode(ino)
        view[path] = (
            inode.mode,
            inode.uid,
            inode.gid,
            inode.mtime_ns,
            inode.size,
            inode.rdev,
            bootstrap.xattrs(ino),
            bootstrap.readlink(ino) if inode.is_symlink else b"",
            tuple(bootstrap.chunks(ino)),
            [entry.name for entry in bootstrap.readdir(ino)] if inode.is_dir else [],
        )
    return view


@given(tree=trees(), draw=st.data())
def test_write_then_read_gives_the_same_tree(
    tree: tuple[FsNode, int, list[BlobRecord], list[FsNode]], draw: st.DataObject
) -> None:
    root, chunk_size, blobs, prefetch = tree
    # Chunks in any order, repeats and indexes past a file's end among them (the writer drops those).
    picks = (
        draw.draw(st.lists(st.tuples(st.sampled_from(prefetch), st.integers(0, 6)), max_size=12)) if prefetch else []
    )
    data = write_bootstrap(root, blobs, chunk_size=chunk_size, prefetch=prefetch, prefetch_chunks=picks)
    bootstrap = Bootstrap(data)
    assert _bootstrap_view(bootstrap) == _model_view(root)
    assert bootstrap.blobs == blobs
    assert bootstrap.chunk_size == chunk_size
    # Hard links: one inode per node object, and nlink counts the names.
    ino_of: dict[int, int] = {}
    names_of: dict[int, int] = {}
    model = {path: node for path, node in _walk_nodes(root)}
    for path, ino in bootstrap.walk():
        assert ino_of.setdefault(id(model[path]), ino) == ino
        names_of[ino] = names_of.get(ino, 0) + 1
    for ino, count in names_of.items():
        if not bootstrap.inode(ino).is_dir:
            assert bootstrap.inode(ino).nlink == count
    assert bootstrap.prefetch_inodes() == [ino_of[id(node)] for node in prefetch]
    expected_chunks: list[tuple[int, int]] = []
    for node, index in picks:
        if index < len(node.chunks) and (ino_of[id(node)], index) not in expected_chunks:
            expected_chunks.append((ino_of[id(node)], index))
    assert bootstrap.prefetch_chunks() == expected_chunks
    assert bootstrap.has_xattrs() == any(node.xattrs for _, node in _walk_nodes(root))
    for path, ino in bootstrap.walk():
        assert bootstrap.resolve(path) == ino
    assert write_bootstrap(root, blobs, chunk_size=chunk_size, prefetch=prefetch, prefetch_chunks=picks) == data


def _walk_nodes(root: FsNode) -> list[tuple[bytes, FsNode]]:
    result, stack = [], [(b"/", root)]
    while stack:
        path, node = stack.pop()
        result.append((path, node))
        prefix = b"" if path == b"/" else path
        stack.extend((prefix + b"/" + name, child) for name, child in node.children.items())
    return result


def _exercise(data: bytes) -> None:
    """Everything a reader does with a bootstrap, over every inode it can reach."""
    bootstrap = Bootstrap(data)
    for _, ino in bootstrap.walk():
        inode = bootstrap.inode(ino)
        bootstrap.xattrs(ino)
        if inode.is_symlink:
            bootstrap.readlink(ino)
        if inode.is_dir:
            bootstrap.lookup(ino, b"a")
        bootstrap.chunk_span(ino, 0, 1 << 62)
        bootstrap.chunk_span(ino, max(0, inode.size - 1), 2)
    bootstrap.prefetch_inodes()
    bootstrap.prefetch_chunks()


@given(tree=trees(), data=st.data())
def test_damaged_bootstraps_raise_only_rafs_errors(
    tree: tuple[FsNode, int, list[BlobRecord], list[FsNode]], data: st.DataObject
) -> None:
    root, chunk_size, blobs, prefetch = tree
    original = bytearray(write_bootstrap(root, blobs, chunk_size=chunk_size, prefetch=prefetch))
    damage = data.draw(st.sampled_from(["truncate", "flip", "random", "flip-tables"]))
    if damage == "truncate":
        damaged = bytes(original[: data.draw(st.integers(0, len(original) - 1))])
    elif damage == "random":
        damaged = bytes(original[:8]) + data.draw(st.binary(max_size=600))
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            low = layout.SUPERBLOCK_SIZE if damage == "flip-tables" else 0
            original[data.draw(st.integers(low, len(original) - 1))] ^= data.draw(st.integers(1, 255))
        damaged = bytes(original)
    try:
        _exercise(damaged)
    except RafsError:
        pass  # anything else (IndexError, struct.error, UnicodeError, ...) fails the test


def _resealed(superblock: bytes) -> bytes:
    """The superblock with its CRC recomputed (to test fields behind the checksum)."""
    return superblock[:-4] + struct.pack("<I", zlib.crc32(superblock[:-4]))


def _small_bootstrap() -> bytes:
    root = new_directory()
    root.children[b"f"] = FsNode(mode=stat.S_IFREG | 0o644)
    return write_bootstrap(root, [])


def test_unknown_version_is_refused() -> None:
    data = bytearray(_small_bootstrap())
    struct.pack_into("<I", data, 8, layout.VERSION + 1)
    data[:256] = _resealed(bytes(data[:256]))
    with pytest.raises(UnsupportedVersion):
        Bootstrap(bytes(data))


@pytest.mark.parametrize("bit", [1, 2, 7, 31, 63])
def test_unknown_feature_bit_is_refused(bit: int) -> None:
    assert not layout.KNOWN_FEATURES & (1 << bit)
    data = bytearray(_small_bootstrap())
    struct.pack_into("<Q", data, 16, 1 << bit)
    data[:256] = _resealed(bytes(data[:256]))
    with pytest.raises(UnknownFeature):
        Bootstrap(bytes(data))


def test_open_bootstrap_refuses_empty_truncated_and_foreign_files(tmp_path: Path) -> None:
    data = _small_bootstrap()
    cases = {"empty": b"", "short": data[:100], "foreign": b"\x89PNG" + bytes(400), "tables cut": data[:-1]}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CorruptBootstrap, match=re.escape(str(path))):  # the message names the file
            open_bootstrap(path)
    (tmp_path / "good").write_bytes(data)
    assert open_bootstrap(tmp_path / "good").resolve("/f") == 2


@given(
    chunk_size=st.sampled_from([0x1000, 0x2000]),
    chunk_count=st.integers(1, 5),
    tail=st.integers(1, 0x2000),
    offset=st.integers(0, 6 * 0x2000),
    size=st.integers(0, 3 * 0x2000),
)
def test_chunk_span_covers_exactly_the_requested_bytes(
    chunk_size: int, chunk_count: int, tail: int, offset: int, size: int
) -> None:
    tail = min(tail, chunk_size)
    file_size = (chunk_count - 1) * chunk_size + tail
    chunks = [
        ChunkRecord(
            0,
            layout.CHUNK_ZERO,
            0,
            0,
            min(chunk_size, file_size - start),
            start,
            _zero_digest(min(chunk_size, file_size - start)),
        )
        for start in range(0, file_size, chunk_size)
    ]
    root = new_directory()
    root.children[b"f"] = FsNode(mode=stat.S_IFREG | 0o644, size=file_size, chunks=chunks)
    bootstrap = Bootstrap(write_bootstrap(root, [], chunk_size=chunk_size))
    slices = bootstrap.chunk_span(2, offset, size)
    end = min(offset + size, file_size)
    covered = [(s.record.file_offset + s.start, s.record.file_offset + s.start + s.length) for s in slices]
    if offset >= end:
        assert slices == []
        return
    assert covered[0][0] == offset and covered[-1][1] == end
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
    assert all(s.length > 0 and s.start + s.length <= s.record.uncompressed_size for s in slices)
    assert [s.chunk_index for s in slices] == list(range(offset // chunk_size, (end - 1) // chunk_size + 1))


@pytest.mark.parametrize(
    ("offset", "size", "expected"),
    [
        (0, 0x1000, [(0, 0, 0x1000)]),  # exactly one chunk
        (0x1000, 1, [(1, 0, 1)]),  # first byte of the second chunk
        (0xFFF, 2, [(0, 0xFFF, 1), (1, 0, 1)]),  # across the edge
        (0x1FFF, 0x1002, [(1, 0xFFF, 1), (2, 0, 0x1000), (3, 0, 1)]),  # across three edges
        (0x3000, 0x5000, [(3, 0, 0x10)]),  # the short last chunk, clipped at the end of file
        (0x3010, 1, []),  # at the end of file
    ],
)
def test_chunk_span_at_chunk_edges(offset: int, size: int, expected: list[tuple[int, int, int]]) -> None:
    file_size = 0x3010
    chunks = [
        ChunkRecord(
            0,
            layout.CHUNK_ZERO,
            0,
            0,
            min(0x1000, file_size - start),
            start,
            _zero_digest(min(0x1000, file_size - start)),
        )
        for start in range(0, file_size, 0x1000)
    ]
    root = new_directory()
    root.children[b"f"] = FsNode(mode=stat.S_IFREG | 0o644, size=file_size, chunks=chunks)
    bootstrap = Bootstrap(write_bootstrap(root, [], chunk_size=0x1000))
    assert [(s.chunk_index, s.start, s.length) for s in bootstrap.chunk_span(2, offset, size)] == expected


@pytest.mark.parametrize("content_size", [True, False])
def test_one_definition_of_a_valid_zstd_chunk(content_size: bool) -> None:
    """`rafs.blob.decode_chunk` (what check, unpack and the daemon use) decodes with `native`'s rules:
    a zstd frame that does not record its content size is refused, under either backend."""
    data = b"a frame of words " * 500
    frame = zstandard.ZstdCompressor(level=3, write_content_size=content_size).compress(data)
    record = ChunkRecord(0, layout.CHUNK_COMPRESSED, 0, len(frame), len(data), 0, chunk_digest(data))
    if content_size:
        assert decode_chunk(frame, record, layout.COMPRESSOR_ZSTD, layout.DIGESTER_BLAKE3) == data
    else:
        with pytest.raises(CorruptChunk, match="content size"):
            decode_chunk(frame, record, layout.COMPRESSOR_ZSTD, layout.DIGESTER_BLAKE3)
