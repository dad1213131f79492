"""The project's exception tree.

One root (`NydusError`); a branch per layer. Each class carries the fields a user needs to act
(path, layer, chunk, blob) and an `exit_code` for the command-line edges, which print one line.
"""

from __future__ import annotations


class NydusError(Exception):
    """Root of every error this project raises on purpose."""

    exit_code = 1


class RafsError(NydusError):
    """The bootstrap or a blob does not follow the format."""

    exit_code = 3


class CorruptBootstrap(RafsError):
    """A bootstrap whose bytes are inconsistent: bad magic, checksum, offset or length."""


class UnsupportedVersion(RafsError):
    """A bootstrap written by a format version this reader does not know."""


class UnknownFeature(RafsError):
    """A bootstrap that sets a feature bit this reader does not know."""


class ChunkError(RafsError):
    """A chunk's stored bytes cannot be turned into the bytes its record promises."""

    def __init__(self, message: str, *, blob_id: str = "", chunk_index: int = -1) -> None:
        context = []
        if blob_id:
            context.append(f"blob {blob_id[:16]}")
        if chunk_index >= 0:
            context.append(f"chunk {chunk_index}")
        super().__init__(f"{', '.join(context)}: {message}" if context else message)
        self.blob_id = blob_id
        self.chunk_index = chunk_index


class CorruptChunk(ChunkError):
    """A chunk that does not decompress to exactly its recorded size."""


class ChunkDigestMismatch(ChunkError):
    """A chunk whose digest differs from its record: the blob was altered or truncated."""


class BuildError(NydusError):
    """Bad builder input: names the layer and the entry so the user can find it."""

    exit_code = 2

    def __init__(self, message: str, *, layer: str = "", entry: str = "") -> None:
        where = ", ".join(part for part in (layer and f"layer {layer}", entry and f"entry {entry!r}") if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.layer = layer
        self.entry = entry


class ConfigError(NydusError):
    """A configuration file or command-line value that cannot be used."""

    exit_code = 2
