"""A file larger than 4 GiB (sparse: zeros plus a tail) keeps its 64-bit size and offsets."""

from __future__ import annotations

import os
from pathlib import Path

from builder.build import BuildOptions, build
from builder.verify import BlobFiles, check
from rafs.mapped import open_bootstrap

SIZE = 4 * 2**30 + 3 * 2**20 + 12345
TAIL = b"the end of a very large file\n" * 100


def test_file_over_4_gib(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    with open(source / "huge.img", "wb") as file:
        file.truncate(SIZE)
        file.seek(SIZE - len(TAIL))
        file.write(TAIL)
    bootstrap_path, blob_dir = str(tmp_path / "image.boot"), str(tmp_path / "blobs")
    result = build("directory", [str(source)], bootstrap_path, blob_dir, BuildOptions())
    bootstrap = open_bootstrap(bootstrap_path)
    ino = bootstrap.resolve("/huge.img")
    assert ino is not None
    inode = bootstrap.inode(ino)
    assert inode.size == SIZE
    chunks = bootstrap.chunks(ino)
    assert len(chunks) == -(-SIZE // bootstrap.chunk_size)
    assert chunks[-1].file_offset == (len(chunks) - 1) * bootstrap.chunk_size > 2**32
    assert sum(1 for chunk in chunks if not chunk.is_zero) == 1
    assert result.zero_chunks == len(chunks) - 1
    assert sum(os.path.getsize(os.path.join(blob_dir, name)) for name in os.listdir(blob_dir)) < 2**20
    files = BlobFiles(bootstrap, blob_dir)
    try:
        pieces = []
        for piece in bootstrap.chunk_span(ino, SIZE - len(TAIL) - 10, 2**20):
            data = files.read_chunk(piece.record, piece.chunk_index)
            pieces.append(data[piece.start : piece.start + piece.length])
    finally:
        files.close()
    assert b"".join(pieces) == bytes(10) + TAIL
    check(bootstrap, blob_dir)
