"""Output files are written under temporary names, then renamed; this gives them ordinary modes.

`tempfile.mkstemp` creates files readable by their owner only (0600). A bootstrap, a blob or an
unpacked tar is meant to be read by others too (a web server serving the blob directory, a
daemon running as another user), so before the rename each gets the mode a plain `open()`
would have given it: 0666 less the process umask.
"""

from __future__ import annotations

import os


def created_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def give_ordinary_mode(descriptor: int) -> None:
    """Set a temporary output file's mode to what a plainly created file would have."""
    os.fchmod(descriptor, created_file_mode())
