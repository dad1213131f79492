"""The bootstrap format: pure data, no network, no FUSE, no command line.

Layout:
- `layout`: every struct and constant (the byte tables are in docs/format.md)
- `records`: decoded records (`Inode`, `ChunkRecord`, `BlobRecord`, ...)
- `tree`: the in-memory tree the builder produces and the writer consumes
- `digest`: chunk digests and the Merkle tree
- `writer`: tree -> bootstrap bytes
- `bootstrap`: random-access reader over bootstrap bytes; `mapped` opens a file by mmap
- `blob`: chunk framing, verification and naming
- `errors`: the exception tree
"""
