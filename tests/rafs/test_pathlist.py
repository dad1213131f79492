"""The prefetch list: what `--trace-out` writes is what `--prefetch-files` reads, for any path."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rafs.errors import ConfigError
from rafs.pathlist import PrefetchEntry, entry_line, parse_entry, read_prefetch_entries

# Paths as a list holds them: no line breaks, no surrounding whitespace, not a comment.
paths = (
    st.binary(min_size=1, max_size=40)
    .map(lambda raw: raw.replace(b"\n", b"_").replace(b"\r", b"_").strip())
    .filter(lambda path: bool(path) and not path.startswith(b"#"))
)
ranges = st.tuples(st.integers(0, 2**40), st.integers(1, 2**30)).map(lambda pair: (pair[0], pair[0] + pair[1]))


@given(st.lists(st.one_of(paths.map(PrefetchEntry), st.builds(lambda p, r: PrefetchEntry(p, *r), paths, ranges))))
def test_written_entries_read_back_the_same(entries: list[PrefetchEntry]) -> None:
    # A whole path whose last tab is followed by a range would read as that range: the daemon
    # never writes such a line (it writes a range after every path), so leave those out.
    entries = [e for e in entries if e.end is not None or parse_entry(e.path, "test").end is None]
    lines = b"".join(entry_line(e.path, e.start, e.end) if e.end is not None else e.path + b"\n" for e in entries)
    parsed = [parse_entry(line.strip(), "test") for line in lines.splitlines()]
    assert parsed == entries


@given(
    start=st.integers(0, 1 << 24),
    length=st.integers(1, 1 << 22),
    shift=st.integers(12, 20),
    chunk_count=st.integers(0, 64),
)
def test_a_range_names_exactly_the_chunks_holding_its_bytes(
    start: int, length: int, shift: int, chunk_count: int
) -> None:
    chunk_size = 1 << shift
    end = start + length
    named = list(PrefetchEntry(b"/f", start, end).chunk_indexes(chunk_size, chunk_count))
    expected = [k for k in range(chunk_count) if k * chunk_size < end and start < (k + 1) * chunk_size]
    assert named == expected
    assert list(PrefetchEntry(b"/f").chunk_indexes(chunk_size, chunk_count)) == list(range(chunk_count))


def test_comments_blank_lines_and_tabs_in_names(tmp_path: Path) -> None:
    listed = tmp_path / "list.txt"
    listed.write_bytes(b"# trace\n\n/usr/bin/sh\n/usr/lib/libc.so.6\t4096-8192\n/odd\tname\n/odd\tname\t1-2x\n")
    assert read_prefetch_entries(str(listed)) == (
        PrefetchEntry(b"/usr/bin/sh"),
        PrefetchEntry(b"/usr/lib/libc.so.6", 4096, 8192),
        PrefetchEntry(b"/odd\tname"),
        PrefetchEntry(b"/odd\tname\t1-2x"),
    )


def test_an_empty_range_is_one_line_naming_the_file_and_line(tmp_path: Path) -> None:
    listed = tmp_path / "list.txt"
    listed.write_bytes(b"/a\n/b\t10-10\n")
    with pytest.raises(ConfigError, match=r"list\.txt line 2: byte range 10-10 is empty"):
        read_prefetch_entries(str(listed))
    with pytest.raises(ConfigError, match="No such file"):
        read_prefetch_entries(str(tmp_path / "missing.txt"))
