"""Lazy Merkle verification (`rafs.verify`): a damaged bootstrap answers what the original
answers, or raises `CorruptBootstrap`; never something else. And it stays lazy."""

from __future__ import annotations

import os
import stat
import struct

import pytest

from rafs import layout
from rafs.bootstrap import Bootstrap
from rafs.digest import chunk_digest
from rafs.errors import CorruptBootstrap, RafsError
from rafs.records import BlobRecord, ChunkRecord
from rafs.tree import FsNode, new_directory
from rafs.writer import write_bootstrap

CHUNK_SIZE = 0x1000
BLOB_ID = "ab" * 32


def _file(data_chunks: list[bytes | None], size: int, **fields: object) -> FsNode:
    """A file whose chunks are given by content (None: a zero chunk), stored back to back."""
    chunks = []
    for position, content in enumerate(data_chunks):
        length = min(CHUNK_SIZE, size - position * CHUNK_SIZE)
        if content is None:
            chunks.append(
                ChunkRecord(0, layout.CHUNK_ZERO, 0, 0, length, position * CHUNK_SIZE, chunk_digest(bytes(length)))
            )
        else:
            chunks.append(
                ChunkRecord(
                    0, layout.CHUNK_COMPRESSED, 100 * position, 50, length, position * CHUNK_SIZE, chunk_digest(content)
                )
            )
    return FsNode(mode=stat.S_IFREG | 0o644, size=size, chunks=chunks, **fields)  # type: ignore[arg-type]


def sample() -> bytes:
    """Every kind of inode, a hard link, xattrs, zero chunks, nested directories, a prefetch table."""
    root = new_directory(0o755, 0, 0, 10**18)
    etc = root.children[b"etc"] = new_directory(0o755, 0, 0, 5)
    etc.xattrs = {b"user.origin": b"base"}
    passwd = etc.children[b"passwd"] = _file([b"a" * CHUNK_SIZE, None, b"tail"], 2 * CHUNK_SIZE + 4, uid=7)
    etc.children[b"passwd.bak"] = passwd
    deep = root.children[b"usr"] = new_directory(0o755, 1, 1, 7)
    lib = deep.children[b"lib"] = new_directory(0o700, 2, 2, 8)
    lib.children[b"libc.so"] = _file([b"x" * 100], 100, gid=3, xattrs={b"security.capability": b"\x01" * 20})
    lib.children[b"empty"] = _file([], 0)
    lib.children[b"sh"] = FsNode(mode=stat.S_IFLNK | 0o777, symlink_target=b"../../bin/busybox")
    root.children[b"dev"] = new_directory()
    root.children[b"dev"].children[b"null"] = FsNode(mode=stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3))
    root.children[b"dev"].children[b"fifo"] = FsNode(mode=stat.S_IFIFO | 0o600)
    blob = BlobRecord(BLOB_ID, 10**6, 10**6, 10, layout.COMPRESSOR_ZSTD)
    return write_bootstrap(root, [blob], chunk_size=CHUNK_SIZE, prefetch=[lib.children[b"libc.so"], passwd])


def served(bootstrap: Bootstrap, ino: int) -> tuple[object, ...]:
    """Everything a mount shows of inode `ino`: metadata, xattrs, and entries, target or chunks."""
    inode = bootstrap.inode(ino)
    content: object = None
    if inode.is_dir:
        content = [entry.name for entry in bootstrap.readdir(ino)]
    elif inode.is_symlink:
        content = bootstrap.readlink(ino)
    elif inode.is_reg:
        content = [
            (piece.record.digest, piece.record.file_offset + piece.start, piece.length)
            for piece in bootstrap.chunk_span(ino, 0, inode.size)
        ]
    fields = (inode.mode, inode.nlink, inode.uid, inode.gid, inode.size, inode.rdev, inode.mtime_ns)
    return (*fields, bootstrap.xattrs(ino), content)


def answers(bootstrap: Bootstrap, paths: list[bytes]) -> dict[bytes, object]:
    """What a daemon would serve for each path (or the error)."""
    result: dict[bytes, object] = {}
    for path in paths:
        try:
            ino = bootstrap.resolve(path)
            result[path] = served(bootstrap, ino) if ino is not None else None
        except CorruptBootstrap as error:
            result[path] = error
    return result


def by_number(bootstrap: Bootstrap, inos: list[int]) -> dict[int, object]:
    """What is served of inodes reached by number (as prefetch does), or the error."""
    found: dict[int, object] = {}
    for ino in inos:
        try:
            found[ino] = served(bootstrap, ino)
        except CorruptBootstrap as error:
            found[ino] = error
    return found


def test_every_single_byte_flip_is_answered_right_or_refused() -> None:
    """Exhaustive over every byte and two masks: each path's answer is the original's or an error."""
    data = sample()
    original = Bootstrap(data)
    paths = [path for path, _ in original.walk()]
    expected = answers(original, paths)
    every_ino = list(range(1, original.inode_count + 1))
    expected_by_number = by_number(original, every_ino)
    assert not any(isinstance(value, Exception) for value in [*expected.values(), *expected_by_number.values()])
    wrong = []
    for offset in range(len(data)):
        for mask in (0x01, 0xFF):
            damaged = bytearray(data)
            damaged[offset] ^= mask
            try:
                bootstrap = Bootstrap(bytes(damaged))
            except RafsError:  # refused at open: bad superblock, version, feature or root
                continue
            got = answers(bootstrap, paths)
            for path in paths:
                if not isinstance(got[path], CorruptBootstrap) and got[path] != expected[path]:
                    wrong.append(f"byte {offset} ^ {mask:#x}: {path!r}")
            # A damaged prefetch table may name other files (it is a hint), but each is served right.
            listed = [ino for ino in bootstrap.prefetch_inodes() if 1 <= ino <= original.inode_count]
            for ino, value in by_number(bootstrap, [*listed, *every_ino]).items():
                if not isinstance(value, CorruptBootstrap) and value != expected_by_number[ino]:
                    wrong.append(f"byte {offset} ^ {mask:#x}: inode {ino}")
    assert wrong == []


def _inode_offset(bootstrap: Bootstrap, ino: int) -> int:
    return bootstrap.superblock.inode_table_offset + (ino - 1) * layout.INODE.size


def test_opening_verifies_only_the_root() -> None:
    bootstrap = Bootstrap(sample())
    assert bootstrap.verifier is not None
    libc = Bootstrap(sample(), verify=False).resolve("/usr/lib/libc.so")
    assert libc is not None
    assert bootstrap.verifier.is_verified(layout.ROOT_INO)
    assert [ino for ino in range(1, bootstrap.inode_count + 1) if bootstrap.verifier.is_verified(ino)] == [1]
    assert bootstrap.resolve("/usr/lib/libc.so") == libc
    assert not bootstrap.verifier.is_verified(libc)  # looked up, its record not yet used
    bootstrap.inode(libc)
    assert bootstrap.verifier.is_verified(libc)


def test_an_inode_reached_by_number_alone_is_verified_through_its_directories() -> None:
    """The prefetch table names inodes by number: they are verified before use all the same."""
    bootstrap = Bootstrap(sample())
    assert bootstrap.verifier is not None
    for ino in bootstrap.prefetch_inodes():
        assert bootstrap.inode(ino).is_reg
        assert bootstrap.verifier.is_verified(ino)


def test_an_inode_reached_by_number_verifies_only_the_directories_above_it() -> None:
    """Prefetching a few files of a large image must not verify every directory of it."""
    reference = Bootstrap(sample(), verify=False)
    libc, dev, etc, usr, lib = (
        reference.resolve(path) for path in ("/usr/lib/libc.so", "/dev", "/etc", "/usr", "/usr/lib")
    )
    assert libc is not None and dev is not None and etc is not None and usr is not None and lib is not None
    assert dev < libc and etc < libc  # numbered before it: a sweep in inode order meets them first
    bootstrap = Bootstrap(sample())
    assert bootstrap.verifier is not None
    assert bootstrap.inode(libc).is_reg
    verified = [ino for ino in range(1, bootstrap.inode_count + 1) if bootstrap.verifier.is_verified(ino)]
    assert verified == sorted([layout.ROOT_INO, usr, lib, libc])


def test_an_inode_whose_directory_starts_with_an_older_link_is_found_all_the_same() -> None:
    """/b lists a hard link to /a/x first, so its block of new children is not where the stored
    tables say: the first directory tried does not list /b/y, and the others are tried in order."""
    root = new_directory()
    first = root.children[b"a"] = new_directory()
    shared = first.children[b"x"] = _file([b"x"], 1)
    second = root.children[b"b"] = new_directory()
    second.children[b"0"] = shared
    second.children[b"y"] = _file([b"y"], 1)
    data = write_bootstrap(root, [BlobRecord(BLOB_ID, 10**6, 10**6, 10, layout.COMPRESSOR_ZSTD)], chunk_size=CHUNK_SIZE)
    y = Bootstrap(data, verify=False).resolve("/b/y")
    assert y is not None
    bootstrap = Bootstrap(data)
    assert bootstrap.verifier is not None
    assert served(bootstrap, y) == served(Bootstrap(data, verify=False), y)
    assert bootstrap.verifier.is_verified(y)


def test_a_directory_reached_by_number_is_verified_up_its_parents() -> None:
    reference = Bootstrap(sample(), verify=False)
    lib = reference.resolve("/usr/lib")
    assert lib is not None
    bootstrap = Bootstrap(sample())
    assert bootstrap.inode(lib).is_dir
    assert bootstrap.lookup(lib, b"sh") == reference.lookup(lib, b"sh")


def test_a_damaged_root_refuses_the_bootstrap() -> None:
    data = bytearray(sample())
    offset = _inode_offset(Bootstrap(bytes(data)), layout.ROOT_INO)
    data[offset + 8] ^= 1  # the root's uid
    with pytest.raises(CorruptBootstrap, match="root"):
        Bootstrap(bytes(data))


def test_a_damaged_file_fails_where_it_is_used_and_names_the_bootstrap() -> None:
    data = bytearray(sample())
    reference = Bootstrap(bytes(data), verify=False)
    passwd = reference.resolve("/etc/passwd")
    assert passwd is not None
    struct.pack_into("<q", data, _inode_offset(reference, passwd) + 32, 12345)  # mtime seconds
    bootstrap = Bootstrap(bytes(data), name="images/app.boot")
    with pytest.raises(CorruptBootstrap, match=r"images/app\.boot: inode \d+: digest mismatch"):
        bootstrap.inode(passwd)
    with pytest.raises(CorruptBootstrap):
        bootstrap.chunk_span(passwd, 0, 10)
    assert bootstrap.resolve("/usr/lib/libc.so") == reference.resolve("/usr/lib/libc.so")  # the rest still serves


@pytest.mark.parametrize("field", ["file_offset", "zero_flag"])
def test_chunk_fields_outside_the_tree_are_checked(field: str) -> None:
    """A shifted chunk or a data chunk marked as zeros would serve wrong bytes: both refused."""
    data = bytearray(sample())
    reference = Bootstrap(bytes(data), verify=False)
    passwd = reference.resolve("/etc/passwd")
    assert passwd is not None
    first = reference.record(passwd).data_start
    record = reference.superblock.chunk_table_offset + first * layout.CHUNK.size
    if field == "file_offset":
        struct.pack_into("<Q", data, record + layout.CHUNK.size + 24, 2048)  # second chunk starts mid-chunk
    else:
        struct.pack_into("<I", data, record + 4, layout.CHUNK_ZERO)  # first chunk holds data
    with pytest.raises(CorruptBootstrap, match="chunk"):
        Bootstrap(bytes(data)).chunk_span(passwd, 0, 3 * CHUNK_SIZE)


def test_unsorted_entries_are_refused() -> None:
    """Swapped entries keep the digest (it sorts) but would break lookup's binary search."""
    data = bytearray(sample())
    reference = Bootstrap(bytes(data), verify=False)
    lib = reference.resolve("/usr/lib")
    assert lib is not None
    start = reference.superblock.dirent_table_offset + reference.record(lib).data_start * layout.DIRENT.size
    first, second = bytes(data[start : start + 24]), bytes(data[start + 24 : start + 48])
    data[start : start + 48] = second + first
    bootstrap = Bootstrap(bytes(data))
    with pytest.raises(CorruptBootstrap, match="not sorted"):
        bootstrap.lookup(lib, b"sh")


def test_without_verify_records_are_served_as_stored() -> None:
    """`verify=False` is for `check`, which recomputes everything itself."""
    data = bytearray(sample())
    reference = Bootstrap(bytes(data), verify=False)
    passwd = reference.resolve("/etc/passwd")
    assert passwd is not None
    struct.pack_into("<I", data, _inode_offset(reference, passwd) + 8, 12345)  # uid
    assert Bootstrap(bytes(data), verify=False).inode(passwd).uid == 12345
    with pytest.raises(CorruptBootstrap):
        Bootstrap(bytes(data)).inode(passwd)
