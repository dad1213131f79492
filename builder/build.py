"""`build()`: layers -> overlay merge -> chunks -> dedup -> blobs -> bootstrap.

This is the only module that decides output paths. Blobs and the bootstrap are written under
temporary names and renamed into place only when the whole build has succeeded; on any error
every temporary file is removed, so a failed build leaves nothing that looks finished.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO

from builder.blobs import BlobWriter
from builder.chunker import ChunkStore, PendingChunk
from builder.entrypoint import StartCommand, TreeFiles, guess_start_files
from builder.layers import (
    FILE,
    HARDLINK,
    HashingReader,
    LayerEntry,
    iter_directory,
    iter_tar_stream,
    normalize_path,
)
from builder.oci_layout import read_layout, split_reference
from builder.overlay import BuildNode, Overlay
from rafs import layout
from rafs.bootstrap import Bootstrap
from rafs.errors import BuildError
from rafs.mapped import open_bootstrap
from rafs.oci import Platform, host_platforms
from rafs.outputs import atomic_file
from rafs.pathlist import PrefetchEntry
from rafs.records import ChunkRecord
from rafs.tree import FsNode, walk
from rafs.writer import write_bootstrap

SOURCE_TYPES = ("directory", "targz", "oci")


@dataclass(frozen=True)
class BuildOptions:
    """Everything `nydus-image create` can be told besides sources and outputs."""

    chunk_size: int = layout.DEFAULT_CHUNK_SIZE
    compressor: int = layout.COMPRESSOR_ZSTD
    digester: int = layout.DIGESTER_BLAKE3
    prefetch_files: tuple[PrefetchEntry, ...] = ()  # `--prefetch-files`: whole files or byte ranges
    chunk_dict: str | None = None
    parent_bootstrap: str | None = None
    keep_whiteouts: bool = False
    progress: bool = False
    platforms: tuple[Platform, ...] = ()  # which manifest of an OCI layout's index; empty: the host's
    # Without `prefetch_files`: guess the prefetch list from this command (`builder.entrypoint`)
    start_command: StartCommand | None = None


@dataclass
class BuildResult:
    """The figures of one build, as written by `--output-json`."""

    bootstrap: str = ""
    blobs: list[str] = field(default_factory=list)
    files: int = 0
    layers: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    chunks: int = 0
    deduplicated_chunks: int = 0
    zero_chunks: int = 0
    root_digest: str = ""
    start_files: int = 0  # files on the prefetch list guessed from the start command
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class LayerSource:
    """One layer to read: a tar file, a directory, or a stream with an expected digest."""

    name: str
    path: str
    kind: str  # "tar" or "directory"
    expected_digest: str = ""


PROGRESS_INTERVAL_S = 0.2  # at most five redraws a second


def human_size(count: int) -> str:
    """`count` bytes in binary units with one decimal: `512 B`, `1.5 MiB`."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


class _Progress:
    """A one-line status on stderr for long builds, only when stderr is a terminal.

    `due()` is cheap, so callers may ask on every chunk and build the message only when a redraw
    is due; a single large file therefore shows its progress as it is read.
    """

    def __init__(self, enabled: bool) -> None:
        self.stream = sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.last = 0.0

    def due(self) -> bool:
        return self.enabled and time.monotonic() - self.last >= PROGRESS_INTERVAL_S

    def update(self, message: str) -> None:
        self.last = time.monotonic()
        self.stream.write(f"\r\x1b[K{message}")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def resolve_sources(source_type: str, sources: Sequence[str], platforms: Sequence[Platform] = ()) -> list[LayerSource]:
    """Turn the command line's sources into layers, lowest first."""
    if not sources:
        raise BuildError("no source given")
    if source_type == "directory":
        if len(sources) != 1 or not os.path.isdir(sources[0]):
            raise BuildError(f"--source-type directory needs one directory, got {list(sources)}")
        return [LayerSource(sources[0], sources[0], "directory")]
    if source_type == "targz":
        for path in sources:
            if not os.path.isfile(path):
                raise BuildError(f"layer {path!r} is not a file")
        return [LayerSource(os.path.basename(path), path, "tar") for path in sources]
    if source_type == "oci":
        layers: list[LayerSource] = []
        for reference in sources:
            directory, tag = split_reference(reference)
            for layer in read_layout(directory, tag, platforms or host_platforms()).layers:
                layers.append(LayerSource(layer.digest[7:19], layer.path, "tar", layer.digest))
        return layers
    raise BuildError(f"unknown source type {source_type!r} (expected one of {', '.join(SOURCE_TYPES)})")


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    parts = []
    remaining = size
    while remaining:
        data = stream.read(remaining)
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


class PrefetchRanks:
    """Where the prefetch list puts each file and each chunk: the number of the first line that
    names it. Lists name image paths, usually absolute ("/usr/bin/sh") as in Nydus. A list with
    byte ranges (a trace) also orders chunks: the image then gets a prefetch chunk table, and
    only the listed chunks of a file go to the head of its blob."""

    def __init__(self, entries: Sequence[PrefetchEntry], chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.file_rank: dict[bytes, int] = {}  # first line naming any of the file
        self._whole: dict[bytes, int] = {}  # first line naming all of it
        self._ranges: dict[bytes, list[tuple[int, PrefetchEntry]]] = {}
        self.by_chunks = any(entry.end is not None for entry in entries)
        for rank, entry in enumerate(entries):
            path = normalize_path(entry.path.lstrip(b"/"), "--prefetch-files")
            self.file_rank.setdefault(path, rank)
            if entry.end is None:
                self._whole.setdefault(path, rank)
            else:
                self._ranges.setdefault(path, []).append((rank, entry))

    def chunk_ranks(self, path: bytes, chunk_count: int) -> list[int | None]:
        """Each chunk's rank in the file at `path` (None: not listed); empty if the file is not."""
        if path not in self.file_rank:
            return []
        ranks: list[int | None] = [self._whole.get(path)] * chunk_count
        for rank, entry in self._ranges.get(path, ()):
            for index in entry.chunk_indexes(self.chunk_size, chunk_count):
                current = ranks[index]
                if current is None or rank < current:
                    ranks[index] = rank
        return ranks


class Builder:
    """One build: owns the chunk store, the overlay and the temporary outputs."""

    def __init__(self, blob_dir: str, options: BuildOptions) -> None:
        if not layout.is_valid_chunk_size(options.chunk_size):
            raise BuildError(f"chunk size {options.chunk_size:#x} is not a power of two between 0x1000 and 0x1000000")
        self.blob_dir = blob_dir
        self.options = options
        self.writers: list[BlobWriter] = []
        self.store = ChunkStore(options.chunk_size, options.digester, options.compressor, self._new_writer)
        self.overlay = Overlay()
        self.result = BuildResult()
        self.prefetch = PrefetchRanks(options.prefetch_files, options.chunk_size)
        self.progress = _Progress(options.progress)
        self._entries_read = 0  # entries of the current layer so far, for the progress line

    def _new_writer(self) -> BlobWriter:
        writer = BlobWriter(self.blob_dir, self.options.compressor)
        self.writers.append(writer)
        return writer

    def _timed(self, phase: str, started: float) -> None:
        self.result.seconds[phase] = self.result.seconds.get(phase, 0.0) + time.monotonic() - started

    def add_bootstrap_layer(self, bootstrap: Bootstrap, name: str, *, as_dictionary: bool) -> None:
        """Use an existing bootstrap as a lower layer (parent/merge) or as a chunk dictionary."""
        chunks = [bootstrap.chunk(i) for i in range(bootstrap.superblock.chunk_count)]
        self.store.add_dictionary(bootstrap.blobs, chunks)
        if as_dictionary:
            return
        entries = list(_entries_from_bootstrap(bootstrap, self.store))
        self.overlay.apply_layer(entries, name)
        self.result.layers += 1

    def add_layer(self, source: LayerSource) -> None:
        """Stream one layer: chunk every file as it passes, then apply the layer to the tree."""
        started = time.monotonic()
        entries: list[tuple[LayerEntry, list[PendingChunk]]] = []
        hashing: HashingReader | None = None
        if source.kind == "directory":
            stream: Iterator[tuple[LayerEntry, IO[bytes] | None]] = iter_directory(source.path, source.name)
            raw_file = None
        else:
            raw_file = open(source.path, "rb")  # noqa: SIM115 - closed in the finally below
            hashing = HashingReader(raw_file)
            stream = iter_tar_stream(hashing, source.name)  # type: ignore[arg-type]
        try:
            for entry, data in stream:
                self._entries_read = len(entries) + 1
                pending = self._chunk_file(entry, data, source.name) if data is not None else []
                entries.append((entry, pending))
                if entry.kind in (FILE, HARDLINK) and not _is_whiteout(entry.path):
                    self.result.files += 1
                if self.progress.due():
                    self.progress.update(self._progress_line(source.name))
            if hashing is not None:
                hashing.drain()
        finally:
            if raw_file is not None:
                raw_file.close()
        if source.expected_digest and hashing is not None:
            actual = "sha256:" + hashing.sha256.hexdigest()
            if actual != source.expected_digest:
                raise BuildError(
                    f"layer content has digest {actual}, expected {source.expected_digest}", layer=source.name
                )
        self.store.finish_blob()
        self._timed("read_and_chunk", started)
        started = time.monotonic()
        self.overlay.apply_layer(entries, source.name, keep_whiteouts=self.options.keep_whiteouts)
        self._timed("overlay", started)
        self.result.layers += 1

    def _progress_line(self, layer: str, entry: LayerEntry | None = None, file_done: int = 0) -> str:
        line = (
            f"layer {self.result.layers + 1} {layer}: {self._entries_read} entries,"
            f" {human_size(self.store.stats.bytes_in)} read"
        )
        if entry is not None:
            path = entry.path.decode("utf-8", "backslashreplace")
            line += f"; {path} {human_size(file_done)} / {human_size(entry.size)}"
        return line

    def _chunk_file(self, entry: LayerEntry, data: IO[bytes], layer: str) -> list[PendingChunk]:
        pending: list[PendingChunk] = []
        remaining = entry.size
        while remaining > 0:
            piece = _read_exact(data, min(self.options.chunk_size, remaining))
            if not piece:
                raise BuildError(
                    f"file data ends {remaining} bytes early", layer=layer, entry=entry.path.decode("utf-8", "replace")
                )
            pending.append(self.store.add_chunk(piece))
            remaining -= len(piece)
            if self.progress.due():
                self.progress.update(self._progress_line(layer, entry, entry.size - remaining))
        return pending

    def _guess_prefetch_list(self, command: StartCommand) -> None:
        """An image built without a prefetch list gets one guessed from its start command."""
        started = time.monotonic()
        self.store.finish_blob()  # every chunk readable
        reader = _NodeReader(self.store, self.options.chunk_size)
        entries = guess_start_files(TreeFiles(self.overlay.root, reader.read), command)
        self.prefetch = PrefetchRanks(entries, self.options.chunk_size)
        self.result.start_files = len({entry.path for entry in entries})
        self._timed("guess_start_files", started)

    def write(self, bootstrap_path: str) -> BuildResult:
        """Rank the prefetch list's chunks, lay out blobs, write the bootstrap, then move every
        output to its final name."""
        if self.options.start_command is not None and not self.options.prefetch_files:
            self._guess_prefetch_list(self.options.start_command)
        started = time.monotonic()
        root = self.overlay.root
        ranked: dict[int, tuple[int, FsNode]] = {}
        ranked_chunks: list[tuple[int, int, FsNode]] = []  # (rank, chunk index, file)
        for path, node in walk(root):
            rank = self.prefetch.file_rank.get(path[1:])
            if rank is None:
                continue
            if id(node) not in ranked or rank < ranked[id(node)][0]:
                ranked[id(node)] = (rank, node)
            if not node.is_reg:
                continue
            pending = node.pending if isinstance(node, BuildNode) else []
            chunk_count = len(pending) or len(node.chunks)
            for index, chunk_rank in enumerate(self.prefetch.chunk_ranks(path[1:], chunk_count)):
                if chunk_rank is None:
                    continue
                if pending:
                    self.store.rank(pending[index], chunk_rank)
                if self.prefetch.by_chunks:
                    ranked_chunks.append((chunk_rank, index, node))
        blobs, blob_index = self.store.blob_table()
        for _, node in walk(root):
            if isinstance(node, BuildNode) and node.is_reg and not node.chunks:
                node.chunks = _final_records(node.pending, blob_index)
        prefetch_nodes = [node for _, node in sorted(ranked.values(), key=lambda item: item[0])]
        ranked_chunks.sort(key=lambda item: (item[0], item[1]))
        self._timed("blobs", started)
        started = time.monotonic()
        features = layout.FEATURE_LAYER if self.options.keep_whiteouts else 0
        data = write_bootstrap(
            root,
            blobs,
            chunk_size=self.options.chunk_size,
            digester=self.options.digester,
            features=features,
            prefetch=prefetch_nodes,
            prefetch_chunks=[(node, index) for _, index, node in ranked_chunks],
        )
        with atomic_file(bootstrap_path) as output:
            output.write(data)
            committed = [writer.commit() for writer in self.writers if writer.blob_id]  # before the rename
        self._timed("bootstrap", started)
        stats = self.store.stats
        result = self.result
        result.bootstrap = bootstrap_path
        result.blobs = [os.path.basename(path) for path in committed]
        result.bytes_in = stats.bytes_in
        result.bytes_out = len(data) + sum(os.path.getsize(path) for path in committed)
        result.chunks = stats.chunks
        result.deduplicated_chunks = stats.deduplicated_chunks
        result.zero_chunks = stats.zero_chunks
        result.root_digest = Bootstrap(data).superblock.root_digest.hex()
        self.progress.done()
        return result

    def discard(self) -> None:
        for writer in self.writers:
            writer.discard()
        self.progress.done()


class _NodeReader:
    """File contents of the tree being built, read back from the blob spools (the entrypoint
    guess reads ELF headers and Python sources). Keeps the last few chunks it decompressed: an
    ELF header is read in several small pieces of one chunk."""

    def __init__(self, store: ChunkStore, chunk_size: int) -> None:
        self.store = store
        self.chunk_size = chunk_size
        self._recent: dict[int, bytes] = {}

    def read(self, node: FsNode, offset: int, size: int) -> bytes:
        pending = node.pending if isinstance(node, BuildNode) else []
        pieces: list[bytes] = []
        position, end = offset, offset + size
        while position < end:
            index = position // self.chunk_size
            if index >= len(pending):
                break
            data = self._chunk(pending[index])
            if data is None:
                break
            start = position - index * self.chunk_size
            pieces.append(data[start : start + end - position])
            position = (index + 1) * self.chunk_size
        return b"".join(pieces)

    def _chunk(self, chunk: PendingChunk) -> bytes | None:
        data = self._recent.get(id(chunk))
        if data is None:
            data = self.store.read_chunk(chunk)
            if data is None:
                return None
            if len(self._recent) >= 8:
                self._recent.pop(next(iter(self._recent)))
            self._recent[id(chunk)] = data
        return data


def _is_whiteout(path: bytes) -> bool:
    return path.rpartition(b"/")[2].startswith(layout.WHITEOUT_PREFIX)


def _final_records(pending: list[PendingChunk], blob_index: dict[int, int]) -> list[ChunkRecord]:
    records = []
    file_offset = 0
    for chunk in pending:
        records.append(chunk.record(file_offset, blob_index))
        file_offset += chunk.uncompressed_size
    return records


def _entries_from_bootstrap(bootstrap: Bootstrap, store: ChunkStore) -> Iterator[tuple[LayerEntry, list[PendingChunk]]]:
    """A bootstrap's tree as layer entries (hard links after their first name)."""
    slots = [store.slot_for(blob) for blob in bootstrap.blobs]
    first_path: dict[int, bytes] = {}
    for path, ino in bootstrap.walk():
        inode = bootstrap.inode(ino)
        relative = path[1:]
        kind = _kind_of(inode.mode)
        entry = LayerEntry(
            path=relative,
            kind=kind,
            permissions=inode.mode & 0o7777,
            uid=inode.uid,
            gid=inode.gid,
            mtime_ns=inode.mtime_ns,
            size=inode.size if inode.is_reg else 0,
            rdev=inode.rdev,
            xattrs=bootstrap.xattrs(ino),
            implicit=bool(inode.flags & layout.INODE_IMPLICIT_DIR),
        )
        if inode.is_symlink:
            entry.link_target = bootstrap.readlink(ino)
        if not inode.is_dir and inode.nlink > 1:
            if ino in first_path:
                entry.kind = HARDLINK
                entry.link_target = first_path[ino]
                yield entry, []
                continue
            first_path[ino] = relative
        pending: list[PendingChunk] = []
        for record in bootstrap.chunks(ino):
            slot = None if record.is_zero else slots[record.blob_index]
            chunk = PendingChunk(
                slot,
                None,
                record.digest,
                record.uncompressed_size,
                record.flags,
                record.compressed_offset,
                record.compressed_size,
            )
            store.use(slot)
            pending.append(chunk)
        yield entry, pending


def _kind_of(mode: int) -> str:
    for kind, check in (
        ("file", stat.S_ISREG),
        ("directory", stat.S_ISDIR),
        ("symlink", stat.S_ISLNK),
        ("char", stat.S_ISCHR),
        ("block", stat.S_ISBLK),
        ("fifo", stat.S_ISFIFO),
    ):
        if check(mode):
            return kind
    raise BuildError(f"inode with unknown type {mode:#o}")


def build(
    source_type: str,
    sources: Sequence[str],
    bootstrap_path: str,
    blob_dir: str,
    options: BuildOptions | None = None,
) -> BuildResult:
    """Build `sources` into `bootstrap_path` and blobs in `blob_dir`; all or nothing."""
    options = options or BuildOptions()
    layers = resolve_sources(source_type, sources, options.platforms)
    created_blob_dir = not os.path.isdir(blob_dir)
    os.makedirs(blob_dir, exist_ok=True)
    try:
        builder = Builder(blob_dir, options)
    except BaseException:
        _remove_if_created(blob_dir, created_blob_dir)
        raise
    try:
        if options.parent_bootstrap:
            builder.add_bootstrap_layer(open_bootstrap(options.parent_bootstrap), "parent", as_dictionary=False)
        if options.chunk_dict:
            builder.add_bootstrap_layer(open_bootstrap(options.chunk_dict), "chunk-dict", as_dictionary=True)
        for layer in layers:
            builder.add_layer(layer)
        return builder.write(bootstrap_path)
    except BaseException:
        builder.discard()
        _remove_if_created(blob_dir, created_blob_dir)
        raise


def _remove_if_created(directory: str, created: bool) -> None:
    """A failed build leaves no trace: remove the blob directory if it made it and it is empty."""
    if created:
        try:
            os.rmdir(directory)
        except OSError:
            pass


def merge(layer_bootstraps: Sequence[str], bootstrap_path: str, options: BuildOptions | None = None) -> BuildResult:
    """Merge per-layer bootstraps (lowest first) into one, applying their whiteouts."""
    if not layer_bootstraps:
        raise BuildError("merge needs at least one layer bootstrap")
    opened = [open_bootstrap(path) for path in layer_bootstraps]
    chunk_size = opened[0].chunk_size
    digester = opened[0].digester
    for path, bootstrap in zip(layer_bootstraps, opened, strict=True):
        if bootstrap.chunk_size != chunk_size or bootstrap.digester != digester:
            raise BuildError("layers differ in chunk size or digester", layer=path)
    base = options or BuildOptions()
    merged_options = BuildOptions(chunk_size=chunk_size, digester=digester, prefetch_files=base.prefetch_files)
    builder = Builder(os.path.dirname(os.path.abspath(bootstrap_path)), merged_options)
    try:
        for path, bootstrap in zip(layer_bootstraps, opened, strict=True):
            entries = list(_entries_from_bootstrap(bootstrap, builder.store))
            builder.overlay.apply_layer(entries, os.path.basename(path))
            builder.result.layers += 1
        return builder.write(bootstrap_path)
    except BaseException:
        builder.discard()
        raise
