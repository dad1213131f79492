"""`inspect` and `stat`: what a bootstrap holds, for people (each record verified before use)."""

from __future__ import annotations

import stat

from builder.verify import show_path
from rafs import layout
from rafs.bootstrap import Bootstrap
from rafs.errors import ConfigError


def describe_inode(bootstrap: Bootstrap, path: str) -> dict[str, object]:
    """`inspect PATH`: metadata, xattrs, chunks and digest of one path."""
    ino = bootstrap.resolve(path)
    if ino is None:
        raise ConfigError(f"{path}: no such path in the bootstrap")
    inode = bootstrap.inode(ino)
    result: dict[str, object] = {
        "path": path,
        "ino": ino,
        "mode": f"{inode.mode:o}",
        "type": type_name(inode.mode),
        "nlink": inode.nlink,
        "uid": inode.uid,
        "gid": inode.gid,
        "size": inode.size,
        "mtime_ns": inode.mtime_ns,
        "rdev": inode.rdev,
        "digest": inode.digest.hex(),
        "xattrs": {k.decode("utf-8", "backslashreplace"): v.hex() for k, v in bootstrap.xattrs(ino).items()},
    }
    if inode.is_symlink:
        result["target"] = show_path(bootstrap.readlink(ino))
    if inode.is_dir:
        result["entries"] = [show_path(entry.name) for entry in bootstrap.readdir(ino)]
    if inode.is_reg:
        result["chunks"] = [
            {
                "blob": bootstrap.blobs[c.blob_index].blob_id if not c.is_zero else None,
                "file_offset": c.file_offset,
                "compressed_offset": c.compressed_offset,
                "compressed_size": c.compressed_size,
                "uncompressed_size": c.uncompressed_size,
                "compressed": c.is_compressed,
                "zero": c.is_zero,
                "digest": c.digest.hex(),
            }
            for c in bootstrap.chunks(ino)
        ]
    return result


def type_name(mode: int) -> str:
    return {
        stat.S_IFREG: "file",
        stat.S_IFDIR: "directory",
        stat.S_IFLNK: "symlink",
        stat.S_IFCHR: "char",
        stat.S_IFBLK: "block",
        stat.S_IFIFO: "fifo",
    }.get(stat.S_IFMT(mode), "unknown")


def statistics(bootstrap: Bootstrap, bootstrap_size: int) -> dict[str, object]:
    """`stat`: counts, sizes, dedup ratio and compression ratio of an image."""
    counts: dict[str, int] = {}
    seen: set[int] = set()
    logical_bytes = 0
    chunk_refs = 0
    unique: dict[tuple[int, int], tuple[int, int]] = {}
    for _, ino in bootstrap.walk():
        inode = bootstrap.inode(ino)
        kind = type_name(inode.mode)
        counts[kind] = counts.get(kind, 0) + 1
        if ino in seen:
            continue
        seen.add(ino)
        if inode.is_reg:
            logical_bytes += inode.size
            for chunk in bootstrap.chunks(ino):
                chunk_refs += 1
                if not chunk.is_zero:
                    unique[(chunk.blob_index, chunk.compressed_offset)] = (
                        chunk.compressed_size,
                        chunk.uncompressed_size,
                    )
    stored_uncompressed = sum(u for _, u in unique.values())
    stored_compressed = sum(c for c, _ in unique.values())
    return {
        "entries": counts,
        "inodes": bootstrap.inode_count,
        "hard_links": sum(counts.values()) - bootstrap.inode_count,
        "logical_bytes": logical_bytes,
        "chunk_references": chunk_refs,
        "unique_chunks": len(unique),
        "stored_uncompressed_bytes": stored_uncompressed,
        "stored_compressed_bytes": stored_compressed,
        "dedup_ratio": round(logical_bytes / stored_uncompressed, 3) if stored_uncompressed else 1.0,
        "compression_ratio": round(stored_uncompressed / stored_compressed, 3) if stored_compressed else 1.0,
        "blobs": [
            {
                "id": b.blob_id,
                "compressed_size": b.compressed_size,
                "chunks": b.chunk_count,
                "compressor": b.compressor_name,
            }
            for b in bootstrap.blobs
        ],
        "bootstrap_bytes": bootstrap_size,
        "chunk_size": bootstrap.chunk_size,
        "digester": layout.DIGESTER_NAMES[bootstrap.digester],
        "root_digest": bootstrap.superblock.root_digest.hex(),
    }
