"""The native hot path: chunk lookup and batch decompression, in C with a pure-Python twin.

Layout:
- `pure`: the specification; every function in pure Python, with the docstrings
- `_cffi`: the same functions over the cffi extension `native._rafs_native` (built from
  `rafs_native.c` by `build.py` at `pip install -e .`)

`RAFS_NATIVE` picks the backend when this package is first imported: `auto` (the default) uses C
if the extension imports and otherwise the twin, with one warning; `c` demands C and raises
`NativeUnavailable` without it, so a benchmark never measures the twin by mistake; `pure` forces
the twin. `backend` says which one is in use ("c" or "pure").

Imports: stdlib, cffi, zstandard and lz4; nothing from the project. The functions raise this
package's own `BadChunkTable` and `BadFrame` (`native.errors`), which `rafs` translates.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings

from native import pure
from native.errors import BadChunkTable, BadFrame

logger = logging.getLogger(__name__)


class NativeUnavailable(ImportError):
    """`RAFS_NATIVE=c` was asked for but the C extension is not built or does not import."""


def _choose_backend(requested: str) -> str:
    if requested not in ("auto", "c", "pure"):
        raise ValueError(f"RAFS_NATIVE={requested!r}: expected auto, c or pure")
    if requested == "pure":
        return "pure"
    try:
        importlib.import_module("native._cffi")
    except ImportError as error:
        if requested == "c":
            raise NativeUnavailable(f"RAFS_NATIVE=c but the C extension is unavailable: {error}") from error
        warnings.warn(
            f"native C extension unavailable ({error}); using the pure-Python twin",
            RuntimeWarning,
            stacklevel=3,
        )
        return "pure"
    return "c"


backend = _choose_backend(os.environ.get("RAFS_NATIVE", "auto").strip().lower() or "auto")
logger.debug("native backend: %s", backend)

if backend == "c":
    from native._cffi import decompress_batch, locate_chunks
else:
    from native.pure import decompress_batch, locate_chunks

ChunkPiece = pure.ChunkPiece
StoredChunk = pure.StoredChunk
COMPRESSOR_NONE = pure.COMPRESSOR_NONE
COMPRESSOR_ZSTD = pure.COMPRESSOR_ZSTD
COMPRESSOR_LZ4_BLOCK = pure.COMPRESSOR_LZ4_BLOCK

__all__ = [
    "COMPRESSOR_LZ4_BLOCK",
    "COMPRESSOR_NONE",
    "COMPRESSOR_ZSTD",
    "BadChunkTable",
    "BadFrame",
    "ChunkPiece",
    "NativeUnavailable",
    "StoredChunk",
    "backend",
    "decompress_batch",
    "locate_chunks",
]
