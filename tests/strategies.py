"""Hypothesis strategies: file metadata, names, contents and whole layer stacks.

`layer_stacks` generates layers that are valid by construction: it keeps the reference tree of
the layers drawn so far, whites out only paths that exist below, never whites out a path and
its ancestor (or a child of an opaque directory) in one layer, puts parents before children,
never repeats a path within a layer, and hard-links only to files of the same layer (so that
each layer can also be built on its own for `merge`).
"""

from __future__ import annotations

import os
import random
import struct

from hypothesis import strategies as st

from tests.reference import Entry, Tree, apply_layer, new_tree, opaque, whiteout

BLOCK = 4096
CHUNK_SIZES = (0x1000, 0x2000, 0x10000)
SHORT_NAMES = ("a", "b", "c", "d", "etc", "bin")
VFS_CAP_REVISION_2 = 0x02000000


def _valid_name(name: str) -> bool:
    encoded = name.encode("utf-8")
    return 0 < len(encoded) <= 255 and name not in (".", "..") and not name.startswith(".wh.")


names = st.one_of(
    st.sampled_from(SHORT_NAMES),
    st.text(
        alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="/\x00"), min_size=1, max_size=12
    ).filter(_valid_name),
    st.text(alphabet="lmnop", min_size=101, max_size=180),
)

link_targets = st.one_of(
    st.sampled_from(["a", "../b", "/etc/passwd", "c/d/e"]),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1, max_size=8),
    st.text(alphabet="qrs/", min_size=256, max_size=600),
)

mtimes_ns = st.one_of(
    st.integers(-(2**31) + 1, 2**33).map(lambda seconds: seconds * 1_000_000_000),
    st.integers(-(2**31 - 1) * 10**9, 2**33 * 10**9),
)
ids = st.one_of(st.sampled_from([0, 1, 1000, 65534]), st.integers(0, 2**31 - 1))
permissions = st.integers(0, 0o7777)
devices = st.builds(os.makedev, st.integers(0, 4095), st.integers(0, 2**20 - 1))


def _random_block(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK)


blocks = st.one_of(
    st.sampled_from([bytes(BLOCK), b"A" * BLOCK, bytes(range(256)) * (BLOCK // 256)]),
    st.integers(0, 3).map(_random_block),
)
contents = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda parts, tail: b"".join(parts) + tail, st.lists(blocks, max_size=4), st.binary(max_size=BLOCK)),
)

capabilities = st.builds(
    lambda effective, permitted, inheritable: struct.pack(
        "<IIIII", VFS_CAP_REVISION_2 | effective, permitted, inheritable, 0, 0
    ),
    st.integers(0, 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)
# "=" cannot appear in a PAX SCHILY.xattr keyword: the record's keyword ends at the first "=".
xattr_suffixes = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="=") | st.sampled_from("éß中"),
    min_size=1,
    max_size=10,
)
xattr_values = st.binary(max_size=40)


@st.composite
def xattrs_for(draw: st.DrawFn, kind: str) -> tuple[tuple[str, bytes], ...]:
    """Xattrs a root-owned Linux directory can hold: user.* only on files and directories."""
    result: dict[str, bytes] = {}
    prefixes = ["trusted."] + (["user."] if kind in ("file", "dir") else [])
    for _ in range(draw(st.integers(0, 2))):
        result[draw(st.sampled_from(prefixes)) + draw(xattr_suffixes)] = draw(xattr_values)
    if kind == "file" and draw(st.integers(0, 4)) == 0:
        result["security.capability"] = draw(capabilities)
    return tuple(sorted(result.items()))


@st.composite
def entries(draw: st.DrawFn, path: str, kind: str) -> Entry:
    """A non-hard-link entry of `kind` at `path` with random metadata."""
    return Entry(
        path=path,
        kind=kind,
        perm=0o777 if kind == "symlink" else draw(permissions),
        uid=draw(ids),
        gid=draw(ids),
        mtime_ns=draw(mtimes_ns),
        data=draw(contents) if kind == "file" else b"",
        target=draw(link_targets) if kind == "symlink" else "",
        rdev=draw(devices) if kind in ("char", "block") else 0,
        xattrs=draw(xattrs_for(kind)),
    )


def _overlaps(path: str, other: str) -> bool:
    return path == other or path.startswith(other + "/") or other.startswith(path + "/") or other == "" or path == ""


def _child(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


@st.composite
def layer_on(draw: st.DrawFn, tree: Tree, max_entries: int) -> list[Entry]:
    """One layer on top of `tree`; applies it to `tree` (the generator's running state)."""
    layer: list[Entry] = []
    lower = sorted(path for path in tree if path)
    hidden: list[str] = []
    if lower:
        for target in draw(st.lists(st.sampled_from(lower), max_size=2, unique=True)):
            if not any(_overlaps(target, other) for other in hidden):
                hidden.append(target)
                layer.append(whiteout(target))
        lower_dirs = [path for path in tree if tree[path].kind == "dir"]
        for directory in draw(st.lists(st.sampled_from(lower_dirs), max_size=1)):
            if not any(_overlaps(directory, other) for other in hidden):
                hidden.append(directory)
                if directory and draw(st.booleans()):
                    layer.append(draw(entries(directory, "dir")))
                layer.append(opaque(directory))
    if draw(st.integers(0, 5)) == 0:
        layer.insert(0, draw(entries("", "dir")))
    apply_layer(tree, layer)
    used = {entry.path for entry in layer}
    linkable: list[str] = []
    for _ in range(draw(st.integers(0, max_entries))):
        parent = draw(st.sampled_from(sorted(path for path, node in tree.items() if node.kind == "dir")))
        path = _child(parent, draw(names))
        if path in used:
            continue
        used.add(path)
        kinds = ["file", "file", "file", "dir", "dir", "symlink", "char", "block", "fifo"]
        live_links = [target for target in linkable if target in tree and tree[target].kind != "dir"]
        if live_links:
            kinds += ["hardlink", "hardlink"]
        kind = draw(st.sampled_from(kinds))
        if kind == "hardlink":
            target = draw(st.sampled_from(live_links))
            if target == path:
                continue
            entry = Entry(path, "hardlink", target=target)
        else:
            entry = draw(entries(path, kind))
        apply_layer(tree, [entry])
        layer.append(entry)
        if kind != "dir":
            linkable.append(path)
    return layer


@st.composite
def layer_stacks(draw: st.DrawFn, max_layers: int = 3, max_entries: int = 8) -> list[list[Entry]]:
    """1..max_layers layers, lowest first, each valid on top of the ones before it."""
    tree = new_tree()
    return [draw(layer_on(tree, max_entries)) for _ in range(draw(st.integers(1, max_layers)))]


compressions = st.sampled_from(["gzip", "zstd", "none"])
chunk_sizes = st.sampled_from(CHUNK_SIZES)
