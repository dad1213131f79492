"""The test-side truth: layer descriptions, a tar writer, and a deliberately simple overlay.

`apply_layer` applies one layer to a `Tree` (a dict from relative path to `Node`) with OCI
changeset semantics, written for clarity and nothing else:

- a layer's whiteouts (`.wh.NAME`, `.wh..wh..opq`) hide lower-layer paths only;
- a directory entry over an existing directory replaces its metadata and keeps its children;
- any other entry replaces whatever was at its path (and everything below it);
- a hard link names the same `Node` object as its target.

`snapshot_*` turn a model, a directory on disk or a tar file into comparable `Snap` values, and
`diff` lists the differences as readable lines.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO

import zstandard

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
KIND_BITS = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}


@dataclass(frozen=True)
class Entry:
    """One tar member to write. `path` is relative ("" is the root); hard links name a target."""

    path: str
    kind: str  # a key of KIND_BITS, or "hardlink"
    perm: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    data: bytes = b""
    target: str = ""
    rdev: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()


def whiteout(path: str) -> Entry:
    """The whiteout marker that hides `path` of the lower layers."""
    directory, _, name = path.rpartition("/")
    return Entry(f"{directory}/{WHITEOUT}{name}" if directory else WHITEOUT + name, "file")


def opaque(directory: str) -> Entry:
    """The marker that hides every lower-layer child of `directory`."""
    return Entry(f"{directory}/{OPAQUE}" if directory else OPAQUE, "file")


# -- writing layers ------------------------------------------------------------------------------


def tar_info(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path or ".")
    info.mode = entry.perm
    info.uid, info.gid = entry.uid, entry.gid
    info.mtime = entry.mtime_ns // 1_000_000_000
    pax = {"mtime": str(Decimal(entry.mtime_ns) / Decimal(1_000_000_000))}
    for name, value in entry.xattrs:
        pax["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    info.pax_headers = pax
    if entry.kind == "file":
        info.size = len(entry.data)
    elif entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, entry.target
    elif entry.kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, entry.target
    elif entry.kind == "fifo":
        info.type = tarfile.FIFOTYPE
    else:
        info.type = tarfile.CHRTYPE if entry.kind == "char" else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(entry.rdev), os.minor(entry.rdev)
    return info


def write_tar(output: IO[bytes], entries: list[Entry]) -> None:
    with tarfile.open(
        fileobj=output, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as archive:
        for entry in entries:
            archive.addfile(tar_info(entry), io.BytesIO(entry.data) if entry.kind == "file" else None)


def write_layer(path: str, entries: list[Entry], compression: str = "gzip") -> str:
    """Write `entries` as a PAX tar at `path`, compressed with "gzip", "zstd" or "none"."""
    raw = io.BytesIO()
    write_tar(raw, entries)
    data = raw.getvalue()
    if compression == "gzip":
        data = gzip.compress(data, mtime=0)
    elif compression == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
    with open(path, "wb") as file:
        file.write(data)
    return path


# -- the reference overlay -----------------------------------------------------------------------


@dataclass(eq=False)
class Node:
    """One inode of the model; hard links are the same object under several paths."""

    kind: str
    perm: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    data: bytes = b""
    target: str = ""
    rdev: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


Tree = dict[str, Node]


def new_tree() -> Tree:
    """An empty image: a root directory 0755 root:root at mtime 0 (what the builder assumes)."""
    return {"": Node("dir")}


def _below(tree: Tree, path: str) -> list[str]:
    prefix = path + "/" if path else ""
    return [p for p in tree if p.startswith(prefix) and p != path]


def _remove(tree: Tree, path: str) -> None:
    for below in _below(tree, path):
        del tree[below]
    tree.pop(path, None)


def _node_of(entry: Entry) -> Node:
    return Node(
        kind=entry.kind,
        perm=entry.perm,
        uid=entry.uid,
        gid=entry.gid,
        mtime_ns=entry.mtime_ns,
        data=entry.data,
        target=entry.target,
        rdev=entry.rdev,
        xattrs={name.encode(): value for name, value in entry.xattrs},
    )


def apply_layer(tree: Tree, entries: list[Entry]) -> None:
    """Apply one layer in place. Raises ValueError for input the OCI rules call invalid."""
    for entry in entries:
        directory, _, name = entry.path.rpartition("/")
        if name == OPAQUE:
            for below in _below(tree, directory):
                del tree[below]
        elif name.startswith(WHITEOUT):
            hidden = f"{directory}/{name[len(WHITEOUT) :]}" if directory else name[len(WHITEOUT) :]
            if hidden not in tree:
                raise ValueError(f"whiteout of missing {hidden!r}")
            _remove(tree, hidden)
    for entry in entries:
        if entry.path.rpartition("/")[2].startswith(WHITEOUT):
            continue
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in tree or tree[parent].kind != "dir":
                _remove(tree, parent)
                tree[parent] = Node("dir")
        existing = tree.get(entry.path)
        if entry.kind == "dir" and existing is not None and existing.kind == "dir":
            existing.perm, existing.uid, existing.gid = entry.perm, entry.uid, entry.gid
            existing.mtime_ns = entry.mtime_ns
            existing.xattrs = {name.encode(): value for name, value in entry.xattrs}
            continue
        if entry.kind == "hardlink":
            if entry.target not in tree:
                raise ValueError(f"hard link to missing {entry.target!r}")
            node = tree[entry.target]
        else:
            node = _node_of(entry)
        _remove(tree, entry.path)
        tree[entry.path] = node


def apply_layers(layers: list[list[Entry]]) -> Tree:
    tree = new_tree()
    for layer in layers:
        apply_layer(tree, layer)
    return tree


# -- snapshots and comparison --------------------------------------------------------------------


@dataclass(frozen=True)
class Snap:
    """Everything a container sees of one path; `links` lists every name of a hard-linked inode."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    data: bytes
    target: bytes
    rdev: int
    xattrs: tuple[tuple[bytes, bytes], ...]
    links: tuple[str, ...]


Snapshot = dict[str, Snap]


def _link_groups(identity: Mapping[str, object]) -> dict[str, tuple[str, ...]]:
    groups: dict[object, list[str]] = {}
    for path, key in identity.items():
        groups.setdefault(key, []).append(path)
    return {path: tuple(sorted(groups[key])) if len(groups[key]) > 1 else () for path, key in identity.items()}


def snapshot_tree(tree: Tree) -> Snapshot:
    identity = {path: id(node) for path, node in tree.items() if node.kind != "dir"}
    links = _link_groups(identity)
    result: Snapshot = {}
    for path, node in tree.items():
        result[path] = Snap(
            mode=KIND_BITS[node.kind] | node.perm,
            uid=node.uid,
            gid=node.gid,
            mtime_ns=node.mtime_ns,
            size=len(node.data) if node.kind == "file" else 0,
            data=node.data,
            target=node.target.encode("utf-8", "surrogateescape"),
            rdev=node.rdev if node.kind in ("char", "block") else 0,
            xattrs=tuple(sorted(node.xattrs.items())),
            links=links.get(path, ()),
        )
    return result


def walk_directory(root: str | bytes) -> Iterator[tuple[str, bytes]]:
    """(relative path, absolute path) of everything under `root`, the root itself first as ""."""
    root_bytes = os.fsencode(root)
    yield "", root_bytes
    for directory, subdirectories, files in os.walk(root_bytes):
        for name in subdirectories + files:
            full = os.path.join(directory, name)
            yield os.fsdecode(os.path.relpath(full, root_bytes)), full


def snapshot_directory(root: str | bytes) -> Snapshot:
    """Snapshot a real directory tree (lstat, xattrs, contents, hard links by inode number)."""
    identity: dict[str, object] = {}
    result: Snapshot = {}
    for relative, full in walk_directory(root):
        info = os.lstat(full)
        try:
            names = os.listxattr(full, follow_symlinks=False)
        except OSError:
            names = []
        xattrs = tuple(sorted((name.encode(), os.getxattr(full, name, follow_symlinks=False)) for name in names))
        data = b""
        if stat.S_ISREG(info.st_mode):
            with open(full, "rb") as file:
                data = file.read()
        target = os.readlink(full) if stat.S_ISLNK(info.st_mode) else b""
        if not stat.S_ISDIR(info.st_mode):
            identity[relative] = (info.st_dev, info.st_ino)
        result[relative] = Snap(
            mode=info.st_mode,
            uid=info.st_uid,
            gid=info.st_gid,
            mtime_ns=info.st_mtime_ns,
            size=info.st_size if stat.S_ISREG(info.st_mode) else 0,
            data=data,
            target=target,
            rdev=info.st_rdev if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else 0,
            xattrs=xattrs,
            links=(),
        )
    links = _link_groups(identity)
    return {path: _with_links(snap, links.get(path, ())) for path, snap in result.items()}


def _with_links(snap: Snap, links: tuple[str, ...]) -> Snap:
    return Snap(**{**snap.__dict__, "links": links})


def snapshot_tar(path: str) -> Snapshot:
    """Snapshot a tar file as `unpack` writes it (PAX mtimes and xattrs, hard links by name)."""
    result: Snapshot = {}
    identity: dict[str, object] = {}
    with tarfile.open(path, "r:*", encoding="utf-8", errors="surrogateescape") as archive:
        for member in archive:
            name = os.path.normpath(member.name)
            name = "" if name == "." else name
            exact = member.pax_headers.get("mtime")
            mtime_ns = int(Decimal(exact) * 1_000_000_000) if exact else int(member.mtime) * 1_000_000_000
            xattrs = tuple(
                sorted(
                    (key[len("SCHILY.xattr.") :].encode(), value.encode("utf-8", "surrogateescape"))
                    for key, value in member.pax_headers.items()
                    if key.startswith("SCHILY.xattr.")
                )
            )
            if member.islnk():
                target = os.path.normpath(member.linkname)
                result[name] = result[target]
                identity[name] = identity[target]
                continue
            data = b""
            if member.isreg():
                extracted = archive.extractfile(member)
                assert extracted is not None
                data = extracted.read()
            kind = {
                tarfile.REGTYPE: "file",
                tarfile.AREGTYPE: "file",
                tarfile.DIRTYPE: "dir",
                tarfile.SYMTYPE: "symlink",
                tarfile.CHRTYPE: "char",
                tarfile.BLKTYPE: "block",
                tarfile.FIFOTYPE: "fifo",
            }[member.type]
            identity[name] = name
            result[name] = Snap(
                mode=KIND_BITS[kind] | member.mode,
                uid=member.uid,
                gid=member.gid,
                mtime_ns=mtime_ns,
                size=len(data),
                data=data,
                target=member.linkname.encode("utf-8", "surrogateescape") if member.issym() else b"",
                rdev=os.makedev(member.devmajor, member.devminor) if member.ischr() or member.isblk() else 0,
                xattrs=xattrs,
                links=(),
            )
    links = _link_groups({path: key for path, key in identity.items() if not stat.S_ISDIR(result[path].mode)})
    return {path: _with_links(snap, links.get(path, ())) for path, snap in result.items()}


def diff(expected: Snapshot, actual: Snapshot, *, ignore_root: bool = False) -> list[str]:
    """Readable differences; empty when the two snapshots agree on every path and field."""
    problems = []
    for path in sorted(set(expected) | set(actual)):
        if ignore_root and path == "":
            continue
        if path not in actual:
            problems.append(f"{path!r}: missing")
            continue
        if path not in expected:
            problems.append(f"{path!r}: unexpected")
            continue
        want, got = expected[path], actual[path]
        for name in Snap.__dataclass_fields__:
            if getattr(want, name) != getattr(got, name):
                shown_want, shown_got = getattr(want, name), getattr(got, name)
                if name == "data":
                    shown_want, shown_got = f"{len(shown_want)} bytes", f"{len(shown_got)} bytes"
                elif name == "mode":
                    shown_want, shown_got = oct(shown_want), oct(shown_got)
                problems.append(f"{path!r}: {name} {shown_want!r} != {shown_got!r}")
    return problems
