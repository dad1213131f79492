"""What an ELF file will make the dynamic loader open next: its `DT_NEEDED` libraries.

A start that loads native code opens shared libraries one after another: the loader reads a
library, finds what it needs, opens that, and so on, each step a round trip on a cold lazy
mount. Reading the dynamic section of a file as soon as it is opened lets the daemon fetch its
libraries in parallel, before the loader asks. Pure: bytes in, names out; the caller fetches the
bytes (`read(offset, size)`) and resolves the names in the image.

Only 64-bit little-endian ELF is understood (what runs here); anything else, or anything that
does not add up, is "no libraries", never an error: this is a guess that saves time, nothing
depends on it.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

ELF_MAGIC = b"\x7fELF"
_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")  # e_ident .. e_shstrndx
_PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
_DYNAMIC_ENTRY = struct.Struct("<qQ")
PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 15, 29
MAX_PROGRAM_HEADERS = 64
MAX_DYNAMIC_BYTES = 64 << 10
MAX_NAME_BYTES = 4096

Read = Callable[[int, int], Awaitable[bytes]]


@dataclass(frozen=True)
class Needed:
    """The libraries an ELF file names, and where it says to look first."""

    libraries: tuple[str, ...]
    search_path: tuple[str, ...]  # DT_RUNPATH (or DT_RPATH) entries, `$ORIGIN` unexpanded


async def needed_libraries(read: Read) -> Needed | None:
    """The `DT_NEEDED` names and run path of the ELF file `read` reads, or None if it is none."""
    header = await read(0, _HEADER.size)
    if len(header) < _HEADER.size or header[:4] != ELF_MAGIC or header[4] != 2 or header[5] != 1:
        return None
    fields = _HEADER.unpack(header)
    program_offset, entry_size, count = fields[5], fields[9], fields[10]
    if entry_size != _PROGRAM_HEADER.size or not 0 < count <= MAX_PROGRAM_HEADERS:
        return None
    table = await read(program_offset, entry_size * count)
    if len(table) != entry_size * count:
        return None
    loads: list[tuple[int, int, int]] = []  # (vaddr, file size, file offset)
    dynamic: tuple[int, int] | None = None
    for p_type, _, offset, vaddr, _, filesz, _, _ in _PROGRAM_HEADER.iter_unpack(table):
        if p_type == PT_LOAD:
            loads.append((vaddr, filesz, offset))
        elif p_type == PT_DYNAMIC:
            dynamic = (offset, min(filesz, MAX_DYNAMIC_BYTES))
    if dynamic is None:
        return None  # a static binary
    raw = await read(*dynamic)
    raw = raw[: len(raw) - len(raw) % _DYNAMIC_ENTRY.size]
    needed: list[int] = []
    search: list[int] = []
    strtab = strsz = None
    for tag, value in _DYNAMIC_ENTRY.iter_unpack(raw):
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            needed.append(value)
        elif tag in (DT_RUNPATH, DT_RPATH):
            search.append(value)
        elif tag == DT_STRTAB:
            strtab = value
        elif tag == DT_STRSZ:
            strsz = value
    if strtab is None or strsz is None or not needed:
        return None
    strtab_offset = next(
        (offset + strtab - vaddr for vaddr, size, offset in loads if vaddr <= strtab < vaddr + size), None
    )
    if strtab_offset is None:
        return None
    wanted_end = min(strsz, max(needed + search) + MAX_NAME_BYTES)
    strings = await read(strtab_offset, wanted_end)

    def name_at(position: int) -> str | None:
        end = strings.find(b"\0", position)
        if position >= len(strings) or end < 0:
            return None
        return strings[position:end].decode("utf-8", "replace")

    libraries = tuple(name for name in map(name_at, needed) if name and "/" not in name)
    paths = tuple(part for value in search if (text := name_at(value)) for part in text.split(":") if part)
    return Needed(libraries, paths)
