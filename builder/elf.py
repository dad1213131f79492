"""What the dynamic loader needs of an ELF file: its interpreter, the libraries it names
(DT_NEEDED), where it says to look for them (DT_RPATH, DT_RUNPATH), and which byte ranges the
loader reads at load time.

`builder.entrypoint` uses this to list, at build time, the shared libraries a container's start
will map. It reads through a callback (`read(offset, size)`), because the builder reads files
out of blobs it is still writing; every offset and length is checked against what was read, and
anything that is not a well-formed dynamic ELF yields None: a guess, never an error.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

ELF_MAGIC = b"\x7fELF"
_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_PF_X, _PF_W = 1, 2
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_STRSZ, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 10, 15, 29
# (address tag, size tag) of the tables the loader reads whole: strings, relocations (RELA, REL,
# and the PLT's), symbol versions have no size tag but lie before these.
_DT_TABLES = ((5, 10), (7, 8), (17, 18), (23, 2))
_MAX_PROGRAM_HEADERS = 256
_MAX_DYNAMIC_BYTES = 1 << 20
_MAX_STRING_TABLE_BYTES = 64 << 20
_OLD_LAYOUT_HEAD_BYTES = 256 << 10

ReadAt = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD: where it lies in the file and in memory, and whether it is code or data."""

    file_offset: int
    file_size: int
    virtual_address: int
    executable: bool
    writable: bool


@dataclass(frozen=True)
class DynamicInfo:
    """The loader's view of one ELF file."""

    interpreter: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]
    segments: tuple[Segment, ...]
    machine: int
    tables_end: int = 0  # file offset where the dynamic linking tables end (0: not known)

    def load_ranges(self) -> list[tuple[int, int]]:
        """Byte ranges the loader reads in full when it maps the file: the headers and dynamic
        linking tables at its start (up to `tables_end`; else the first segment, at most
        256 KiB of it) and every writable segment (relocations are applied there). Code and
        read-only data are read page by page as they are used, so they are left out."""
        ranges: list[tuple[int, int]] = []
        if self.segments:
            first = self.segments[0]
            head_end = self.tables_end or first.file_offset + min(first.file_size, _OLD_LAYOUT_HEAD_BYTES)
            ranges.append((0, head_end))
        for segment in self.segments:
            if segment.writable and segment.file_size:
                ranges.append((segment.file_offset, segment.file_offset + segment.file_size))
        return ranges

    def code_ranges(self) -> list[tuple[int, int]]:
        """The executable segments: read page by page as the code runs."""
        return [
            (segment.file_offset, segment.file_offset + segment.file_size)
            for segment in self.segments
            if segment.executable and segment.file_size
        ]


def parse_dynamic(read: ReadAt, file_size: int) -> DynamicInfo | None:
    """The dynamic-loading facts of the ELF file read by `read`, or None if it is not a
    well-formed ELF (a script, a data file, a truncated or hostile header)."""
    header = read(0, 64)
    if len(header) < 52 or header[:4] != ELF_MAGIC or header[4] not in (1, 2) or header[5] not in (1, 2):
        return None
    is_64 = header[4] == 2
    order = "<" if header[5] == 1 else ">"
    if is_64:
        if len(header) < 64:
            return None
        machine, ph_offset, ph_entry_size, ph_count = (
            struct.unpack_from(order + "H", header, 18)[0],
            struct.unpack_from(order + "Q", header, 32)[0],
            *struct.unpack_from(order + "HH", header, 54),
        )
        ph_format, ph_size = order + "IIQQQQQQ", 56
    else:
        machine, ph_offset, ph_entry_size, ph_count = (
            struct.unpack_from(order + "H", header, 18)[0],
            struct.unpack_from(order + "I", header, 28)[0],
            *struct.unpack_from(order + "HH", header, 42),
        )
        ph_format, ph_size = order + "IIIIIIII", 32
    if ph_entry_size < ph_size or ph_count > _MAX_PROGRAM_HEADERS or ph_offset + ph_count * ph_entry_size > file_size:
        return None
    table = read(ph_offset, ph_count * ph_entry_size)
    if len(table) < ph_count * ph_entry_size:
        return None
    segments: list[Segment] = []
    interpreter: str | None = None
    dynamic: tuple[int, int] | None = None
    for index in range(ph_count):
        fields = struct.unpack_from(ph_format, table, index * ph_entry_size)
        if is_64:
            kind, flags, offset, vaddr, _, file_bytes = fields[:6]
        else:
            kind, offset, vaddr, _, file_bytes, _, flags = fields[:7]
        if offset + file_bytes > file_size:
            return None
        if kind == _PT_LOAD:
            segments.append(Segment(offset, file_bytes, vaddr, bool(flags & _PF_X), bool(flags & _PF_W)))
        elif kind == _PT_INTERP and 0 < file_bytes <= 4096:
            interpreter = read(offset, file_bytes).split(b"\0", 1)[0].decode("utf-8", "replace") or None
        elif kind == _PT_DYNAMIC and file_bytes <= _MAX_DYNAMIC_BYTES:
            dynamic = (offset, file_bytes)
    needed: list[str] = []
    rpath: list[str] = []
    runpath: list[str] = []
    tables_end = 0
    if dynamic is not None:
        entries = _dynamic_entries(read(*dynamic), order + ("qQ" if is_64 else "iI"))
        tables_end = _tables_end(entries, segments, file_size)
        strings = _string_table(read, entries, segments, file_size)
        if strings is not None:
            for tag, value in entries:
                text = _string_at(strings, value)
                if text is None:
                    continue
                if tag == _DT_NEEDED:
                    needed.append(text)
                elif tag == _DT_RPATH:
                    rpath.extend(part for part in text.split(":") if part)
                elif tag == _DT_RUNPATH:
                    runpath.extend(part for part in text.split(":") if part)
    return DynamicInfo(interpreter, tuple(needed), tuple(rpath), tuple(runpath), tuple(segments), machine, tables_end)


def _dynamic_entries(data: bytes, entry_format: str) -> list[tuple[int, int]]:
    size = struct.calcsize(entry_format)
    entries = []
    for position in range(0, len(data) - size + 1, size):
        tag, value = struct.unpack_from(entry_format, data, position)
        if tag == _DT_NULL:
            break
        entries.append((tag, value))
    return entries


def _file_offset(address: int, segments: list[Segment]) -> int | None:
    for segment in segments:
        if segment.virtual_address <= address < segment.virtual_address + segment.file_size:
            return segment.file_offset + address - segment.virtual_address
    return None


def _tables_end(entries: list[tuple[int, int]], segments: list[Segment], file_size: int) -> int:
    """Where the last of the dynamic linking tables ends in the file (0 if none is found in the
    first segment, as they are in every layout GNU ld and lld write)."""
    values = dict(entries)
    end = 0
    for address_tag, size_tag in _DT_TABLES:
        if address_tag in values and size_tag in values:
            offset = _file_offset(values[address_tag], segments)
            if offset is not None:
                end = max(end, offset + values[size_tag])
    if not segments or end > segments[0].file_offset + segments[0].file_size or end > file_size:
        return 0
    return end


def _string_table(
    read: ReadAt, entries: list[tuple[int, int]], segments: list[Segment], file_size: int
) -> bytes | None:
    """The dynamic string table, found by mapping DT_STRTAB's address through the PT_LOADs."""
    address = next((value for tag, value in entries if tag == _DT_STRTAB), None)
    size = next((value for tag, value in entries if tag == _DT_STRSZ), None)
    if address is None or size is None or size > _MAX_STRING_TABLE_BYTES:
        return None
    offset = _file_offset(address, segments)
    if offset is None or offset + size > file_size:
        return None
    data = read(offset, size)
    return data if len(data) == size else None


def _string_at(strings: bytes, offset: int) -> str | None:
    if offset >= len(strings):
        return None
    end = strings.find(b"\0", offset)
    text = strings[offset : end if end >= 0 else len(strings)]
    return text.decode("utf-8", "replace") if text else None
