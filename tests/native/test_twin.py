"""C == pure: every native function and its twin on the same inputs, outputs and exception types.

The extension must be built (`pip install -e .`): `test_the_c_extension_is_built` fails without it.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable

import lz4.block
import pytest
import zstandard
from hypothesis import example, given
from hypothesis import strategies as st

from native import pure
from rafs import layout

try:
    from native import _cffi
except ImportError:
    _cffi = None  # type: ignore[assignment]

needs_c = pytest.mark.skipif(_cffi is None, reason="the C extension native._rafs_native is not built")

RECORD = struct.Struct("<IIQIIQ32s")
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1


def outcome(function: Callable[[], object]) -> tuple[str, object]:
    """("ok", result) or ("error", exception type): what C and the twin must agree on."""
    try:
        return "ok", function()
    except Exception as error:
        return "error", type(error)


def test_backend_is_the_one_rafs_native_asks_for() -> None:
    """`RAFS_NATIVE=c` runs on C or not at all; `pure` on the twin; `auto` on C when it is built."""
    import native

    requested = os.environ.get("RAFS_NATIVE", "auto").strip().lower() or "auto"
    expected = {"c": "c", "pure": "pure"}.get(requested, "c" if _cffi is not None else "pure")
    assert native.backend == expected
    if requested == "c":
        assert _cffi is not None, "RAFS_NATIVE=c, but the C extension native._rafs_native does not import"


def test_the_c_extension_is_built() -> None:
    """Both passes of the suite need it (the pure pass compares against it too): asked for in a
    fresh interpreter, `RAFS_NATIVE=c` must give C, whatever this run's backend is."""
    probe = subprocess.run(
        [sys.executable, "-c", "import native; print(native.backend)"],
        env={**os.environ, "RAFS_NATIVE": "c"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (probe.returncode, probe.stdout.strip()) == (0, "c"), probe.stderr[-2000:]


def test_layout_constants_agree() -> None:
    assert layout.CHUNK.size == pure.CHUNK_RECORD_SIZE
    assert layout.CHUNK.format.startswith(pure._CHUNK_HEAD.format)
    assert (layout.CHUNK_COMPRESSED, layout.CHUNK_ZERO) == (pure.CHUNK_COMPRESSED, pure.CHUNK_ZERO)
    assert (layout.COMPRESSOR_NONE, layout.COMPRESSOR_ZSTD, layout.COMPRESSOR_LZ4_BLOCK) == (
        pure.COMPRESSOR_NONE,
        pure.COMPRESSOR_ZSTD,
        pure.COMPRESSOR_LZ4_BLOCK,
    )


def test_demanding_c_without_extension_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import native

    monkeypatch.setitem(sys.modules, "native._cffi", None)  # makes the import fail
    with pytest.raises(native.NativeUnavailable):
        native._choose_backend("c")
    assert issubclass(native.NativeUnavailable, ImportError)
    with pytest.warns(RuntimeWarning):
        assert native._choose_backend("auto") == "pure"
    assert native._choose_backend("pure") == "pure"
    with pytest.raises(ValueError):
        native._choose_backend("fast")


# -- chunk lookup ------------------------------------------------------------------------------


@st.composite
def chunk_tables(draw: st.DrawFn, corrupt: bool = True) -> tuple[bytes, int, int, int, int, int, list[int], bool]:
    """(buffer, table_offset, blob_count, first, count, file_size, edges, corrupted): a file's chunk
    run inside a larger buffer; valid most of the time, corrupt or truncated some of the time."""
    huge = draw(st.booleans())
    size_strategy = st.integers(1 << 31, U32_MAX) if huge else st.integers(1, 0x10000)
    sizes = draw(st.lists(size_strategy, max_size=12))
    blob_count = draw(st.integers(0 if corrupt else 1, 3))
    records = []
    file_offset = 0
    edges = [0]
    for size in sizes:
        flags = draw(st.sampled_from([0, layout.CHUNK_COMPRESSED, layout.CHUNK_ZERO]))
        blob_index = draw(st.integers(0, max(blob_count - 1, 0)))
        records.append([blob_index, flags, 0, size, size, file_offset])
        file_offset += size
        edges.append(file_offset)
    file_size = file_offset
    corruption = draw(
        st.sampled_from(["none", "none", "field", "file_size", "truncate", "count"] if corrupt else ["none"])
    )
    if corruption == "field" and records:
        record = draw(st.sampled_from(records))
        field = draw(st.sampled_from([0, 1, 4, 5]))
        record[field] = draw(st.integers(0, U64_MAX if field == 5 else U32_MAX))
    elif corruption == "file_size":
        file_size = draw(st.integers(0, U64_MAX))
    before = draw(st.integers(0, 3))
    after = draw(st.integers(0, 2))
    padding = draw(st.integers(0, 70))
    filler = RECORD.pack(0, 0, 0, 7, 7, 0, bytes(32))
    body = b"".join(RECORD.pack(*record, bytes(32)) for record in records)
    buffer = b"\xa5" * padding + filler * before + body + filler * after
    count = len(records)
    if corruption == "truncate":
        buffer = buffer[: draw(st.integers(0, len(buffer)))]
    elif corruption == "count":
        count = draw(st.integers(0, count + after + 3))
    return buffer, padding, blob_count, before, count, file_size, edges, corruption != "none"


@st.composite
def ranges(draw: st.DrawFn, edges: list[int], file_size: int) -> tuple[int, int]:
    """(offset, size) at, just before and just after chunk edges, anywhere, or past the end."""
    anchor = draw(st.sampled_from([*edges, file_size]))
    offset = max(0, min(U64_MAX, anchor + draw(st.integers(-2, 2))))
    if draw(st.booleans()):
        offset = draw(st.integers(0, max(file_size + 10, 0)).map(lambda value: min(value, U64_MAX)))
    size = draw(
        st.one_of(st.integers(0, 3), st.integers(0, 0x30000), st.sampled_from([1 << 32, (1 << 33) + 1, U64_MAX]))
    )
    return offset, size


def reference_pieces(edges: list[int], first: int, offset: int, size: int) -> list[tuple[int, int, int]]:
    """The simplest model of a valid table: walk every chunk, keep the overlapping ones."""
    end = min(offset + size, edges[-1])
    pieces = []
    for position in range(len(edges) - 1):
        low, high = max(edges[position], offset), min(edges[position + 1], end)
        if low < high:
            pieces.append((first + position, low - edges[position], high - low))
    return pieces


@needs_c
@given(data=st.data())
def test_locate_chunks_twin(data: st.DataObject) -> None:
    buffer, table_offset, blob_count, first, count, file_size, edges, _ = data.draw(chunk_tables())
    for _ in range(4):
        offset, size = data.draw(ranges(edges, file_size))
        arguments = (buffer, table_offset, blob_count, first, count, file_size, offset, size)
        expected = outcome(lambda: pure.locate_chunks(*arguments))  # noqa: B023
        assert outcome(lambda: _cffi.locate_chunks(*arguments)) == expected  # noqa: B023
        assert outcome(lambda: _cffi.locate_chunks(memoryview(bytearray(buffer)), *arguments[1:])) == expected  # noqa: B023


@given(data=st.data())
def test_locate_chunks_matches_reference_on_valid_tables(data: st.DataObject) -> None:
    buffer, table_offset, blob_count, first, count, file_size, edges, corrupted = data.draw(chunk_tables(corrupt=False))
    assert not corrupted and blob_count > 0
    offset, size = data.draw(ranges(edges, file_size))
    result = outcome(
        lambda: pure.locate_chunks(buffer, table_offset, blob_count, first, count, file_size, offset, size)
    )
    assert result == ("ok", reference_pieces(edges, first, offset, size))


@needs_c
@pytest.mark.parametrize(
    "arguments",
    [
        (b"", 0, 0, 0, 0, 0, 0, 0),
        (b"", 0, 0, 0, 1, 10, 0, 1),
        (bytes(64), 0, 1, 0, 1, 10, 0, 1),  # a zero-size chunk covers nothing
        (bytes(64), U64_MAX, 1, U64_MAX, 1, 10, 0, 1),  # overflowing run position
        (bytes(64), 0, 1, 0, 0, 10, 0, 1),  # a file with bytes but no chunks
        (bytes(64), 0, 1, 0, 1, 0, 0, U64_MAX),  # empty file, huge read
        (bytes(64), 0, 1, -1, 1, 0, 0, 1),  # negative: ValueError on both
        (bytes(64), 0, 1, 0, 1, 0, 1 << 64, 1),
    ],
)
def test_locate_chunks_edges(arguments: tuple[bytes, int, int, int, int, int, int, int]) -> None:
    assert outcome(lambda: _cffi.locate_chunks(*arguments)) == outcome(lambda: pure.locate_chunks(*arguments))


# -- batch decompression -----------------------------------------------------------------------

_payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda unit, times: unit * times, st.binary(min_size=1, max_size=8), st.integers(1, 5000)),
)


@st.composite
def batches(draw: st.DrawFn) -> tuple[int, bytes, list[tuple[int, int, bool, int]], int]:
    """(compressor, source, chunks, output_len): stored chunks of one blob, some of them bad."""
    compressor = draw(
        st.sampled_from([pure.COMPRESSOR_ZSTD] * 4 + [pure.COMPRESSOR_NONE, pure.COMPRESSOR_LZ4_BLOCK, 7])
    )
    source = bytearray(draw(st.binary(max_size=4)))
    chunks = []
    for data in draw(st.lists(_payloads, max_size=5)):
        compressed = draw(st.booleans())
        if compressed and compressor == pure.COMPRESSOR_LZ4_BLOCK:
            stored = lz4.block.compress(data, store_size=False)
        elif compressed:
            stored = zstandard.ZstdCompressor(
                level=3, write_checksum=draw(st.booleans()), write_content_size=draw(st.integers(0, 5)) > 0
            ).compress(data)
        else:
            stored = data
        size = len(data)
        damage = draw(st.sampled_from(["none"] * 5 + ["truncate", "flip", "trailing", "size", "concat", "magic"]))
        if damage == "truncate" and stored:
            stored = stored[: draw(st.integers(0, len(stored) - 1))]
        elif damage == "flip" and stored:
            at = draw(st.integers(0, len(stored) - 1))
            stored = stored[:at] + bytes([stored[at] ^ draw(st.integers(1, 255))]) + stored[at + 1 :]
        elif damage == "trailing":
            stored += draw(st.binary(min_size=1, max_size=4))
        elif damage == "size":
            size = max(0, size + draw(st.sampled_from([-1, 1, 1000, -size])))
        elif damage == "concat":
            stored += stored
        elif damage == "magic":
            stored = b"\x28\xb5\x2f\xfd"[: draw(st.integers(0, 4))]
        chunks.append((len(source), len(stored), compressed, size))
        source += stored
        source += draw(st.binary(max_size=3))
    output_len = sum(size for _, _, _, size in chunks)
    if draw(st.integers(0, 9)) == 0:
        output_len += draw(st.sampled_from([-1, 1]))
    if chunks and draw(st.integers(0, 9)) == 0:
        start, length, compressed, size = chunks[-1]
        chunks[-1] = (start + len(source), length, compressed, size)  # outside the source
    return compressor, bytes(source), chunks, max(output_len, 0)


def run_batch(
    function: Callable[..., None],
    compressor: int,
    source: bytes,
    chunks: list[tuple[int, int, bool, int]],
    output_len: int,
) -> tuple[str, object]:
    output = bytearray(output_len)

    def call() -> bytes:
        function(compressor, source, chunks, output)
        return bytes(output)

    return outcome(call)


# Found by hypothesis: a zstd frame header recording content size 0 with no block after it
# (truncated); python-zstandard's decompress() returned b"" for it, libzstd rejects it.
TRUNCATED_EMPTY_FRAME = b"(\xb5/\xfd \x00"


@needs_c
@example(batch=(1, TRUNCATED_EMPTY_FRAME, [(0, 6, True, 0)], 0))
@example(batch=(1, TRUNCATED_EMPTY_FRAME + b"\x01\x00\x00x", [(0, 10, True, 0)], 0))
@given(batch=batches())
def test_decompress_batch_twin(batch: tuple[int, bytes, list[tuple[int, int, bool, int]], int]) -> None:
    expected = run_batch(pure.decompress_batch, *batch)
    assert run_batch(_cffi.decompress_batch, *batch) == expected


@given(data=st.lists(_payloads, max_size=4))
def test_decompress_batch_roundtrip(data: list[bytes]) -> None:
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=False)
    source = b""
    chunks = []
    for item in data:
        frame = compressor.compress(item)
        chunks.append((len(source), len(frame), True, len(item)))
        source += frame
    for function in [pure.decompress_batch] + ([_cffi.decompress_batch] if _cffi else []):
        output = bytearray(sum(len(item) for item in data))
        function(pure.COMPRESSOR_ZSTD, source, chunks, output)
        assert bytes(output) == b"".join(data)


@needs_c
def test_decompress_batch_large_chunks() -> None:
    """Chunk-sized frames (1 MiB, 16 MiB) through both backends, into a memoryview output."""
    data = [bytes(range(256)) * 4096, b"\x00" * (16 << 20)]
    frames = [zstandard.ZstdCompressor(level=3).compress(item) for item in data]
    source = b"".join(frames)
    chunks = [(0, len(frames[0]), True, len(data[0])), (len(frames[0]), len(frames[1]), True, len(data[1]))]
    for function in (pure.decompress_batch, _cffi.decompress_batch):
        output = bytearray(len(data[0]) + len(data[1]))
        function(pure.COMPRESSOR_ZSTD, memoryview(source), chunks, memoryview(output))
        assert output == data[0] + data[1]


@needs_c
def test_decompress_batch_rejects_read_only_output() -> None:
    for function in (pure.decompress_batch, _cffi.decompress_batch):
        with pytest.raises(TypeError):
            function(pure.COMPRESSOR_NONE, b"ab", [(0, 2, False, 2)], memoryview(b"xy"))


@needs_c
@pytest.mark.parametrize("corrupt_at", [None, 70, 99])
def test_locate_chunks_beyond_scratch_capacity(corrupt_at: int | None) -> None:
    """More pieces than the C wrapper's per-thread scratch holds (64) takes the retry path."""
    records = [[0, 0, 0, 10, 10, 10 * index] for index in range(100)]
    if corrupt_at is not None:
        records[corrupt_at][5] += 1
    table = b"".join(RECORD.pack(*record, bytes(32)) for record in records)
    arguments = (table, 0, 1, 0, 100, 1000, 5, 990)
    expected = outcome(lambda: pure.locate_chunks(*arguments))
    assert expected[0] == ("ok" if corrupt_at is None else "error")
    assert outcome(lambda: _cffi.locate_chunks(*arguments)) == expected


def test_the_extension_is_built_from_the_header() -> None:
    """The cdef is generated from `rafs_native.h`: every constant the header defines is the
    compiled library's, with the header's value."""
    import re
    from pathlib import Path

    header = (Path(pure.__file__).parent / "rafs_native.h").read_text()
    defined = {name: int(value) for name, value in re.findall(r"#define (RAFS_\w+) \(?(-?\d+)\)?", header)}
    assert len(defined) > 10
    assert _cffi is not None
    from native._rafs_native import lib

    assert {name: getattr(lib, name) for name in defined} == defined
