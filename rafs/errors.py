"""The project's exception tree: one root, one branch per layer, one exit code per branch.

Every branch that a command line can end with is defined here, with its exit code, so the codes
are unique and `docs/errors.md` (generated from this module by `tests/test_errors.py`) lists
them all. Leaves live next to the code that raises them and inherit their branch's code.

Every error names where it happened in one format: `blob 1a2b3c4d5e6f7a8b, chunk 3: message`
(the context's names and values, then the message), so a user can find the file, the layer,
the blob or the URL at fault.
"""

from __future__ import annotations


class NydusError(Exception):
    """Root of every error this project raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *context: tuple[str, object]) -> None:
        shown = [f"{name} {value}" for name, value in context if value not in ("", None)]
        super().__init__(f"{', '.join(shown)}: {message}" if shown else message)
        self.message = message


class ConfigError(NydusError):
    """A configuration file, command-line value or image reference that cannot be used."""

    exit_code = 2


class RafsError(NydusError):
    """A bootstrap, chunk or blob that does not follow the format (corrupt, or another version)."""

    exit_code = 3


class BackendError(NydusError):
    """A backend (local directory, HTTP server, registry) could not deliver the bytes asked for."""

    exit_code = 4

    def __init__(self, message: str, *context: tuple[str, object], blob_id: str = "") -> None:
        super().__init__(message, ("blob", blob_id[:16]), *context)
        self.blob_id = blob_id


class ConvertError(NydusError):
    """`nydusify`: the source cannot be converted, or the target does not match it."""

    exit_code = 5


class MountError(NydusError):
    """The mountpoint cannot be used."""

    exit_code = 6


class ImageError(NydusError):
    """A converted image that breaks the conventions (no bootstrap layer, other format, mismatch)."""

    exit_code = 7


class BuildError(NydusError):
    """Bad builder input: names the layer and the entry so the user can find it."""

    exit_code = 8

    def __init__(self, message: str, *, layer: str = "", entry: str = "") -> None:
        super().__init__(message, ("layer", layer), ("entry", repr(entry) if entry else ""))
        self.layer = layer
        self.entry = entry


class CacheError(NydusError):
    """The chunk cache directory cannot be used (permissions, full disk)."""

    exit_code = 9


class SnapshotterError(NydusError):
    """`containerd-nydus-grpc`: a snapshot request that cannot be served (containerd sees a gRPC code)."""

    exit_code = 10


# ---- the format's leaves


class CorruptBootstrap(RafsError):
    """A bootstrap whose bytes are inconsistent: bad magic, checksum, offset or length."""


class UnsupportedVersion(RafsError):
    """A bootstrap written by a format version this reader does not know."""


class UnknownFeature(RafsError):
    """A bootstrap that sets a feature bit this reader does not know."""


class CorruptBlob(RafsError):
    """A blob file that is missing, of the wrong size, or whose sha256 is not its name."""


class ChunkError(RafsError):
    """A chunk's stored bytes cannot be turned into the bytes its record promises."""

    def __init__(self, message: str, *, blob_id: str = "", chunk_index: int = -1, path: str = "") -> None:
        chunk = chunk_index if chunk_index >= 0 else None
        super().__init__(message, ("path", path), ("blob", blob_id[:16]), ("chunk", chunk))
        self.blob_id = blob_id
        self.chunk_index = chunk_index
        self.path = path

    def at_path(self, path: str) -> ChunkError:
        """The same error (same class), naming the file the chunk belongs to."""
        return type(self)(self.message, blob_id=self.blob_id, chunk_index=self.chunk_index, path=path)


class CorruptChunk(ChunkError):
    """A chunk that does not decompress to exactly its recorded size."""


class ChunkDigestMismatch(ChunkError):
    """A chunk whose digest differs from its record: the blob was altered or truncated."""


BRANCHES: tuple[type[NydusError], ...] = (
    NydusError,
    ConfigError,
    RafsError,
    BackendError,
    ConvertError,
    MountError,
    ImageError,
    BuildError,
    CacheError,
    SnapshotterError,
)
