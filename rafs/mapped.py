"""Open a bootstrap file as a read-only mmap: the one place in `rafs` that touches a file.

Mapping instead of reading keeps opening O(1): the kernel pages in only the records that
lookups touch, and every process mapping the same file shares those pages.
"""

from __future__ import annotations

import mmap
import os

from rafs.bootstrap import Bootstrap
from rafs.errors import CorruptBootstrap


def open_bootstrap(path: str | os.PathLike[str], *, verify: bool = True) -> Bootstrap:
    """Map `path` and return a validated `Bootstrap` over it (see `Bootstrap` for `verify`)."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            raise CorruptBootstrap(f"{os.fspath(path)}: empty file")
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return Bootstrap(mapping, verify=verify, name=os.fspath(path))
    except CorruptBootstrap as error:
        mapping.close()
        raise CorruptBootstrap(f"{os.fspath(path)}: {error}") from None
    except Exception:
        mapping.close()
        raise
