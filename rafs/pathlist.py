"""Read a path list: the file `nydusd --trace-out` writes and `--prefetch-files` reads.

One path a line, in the order the files should be fetched; blank lines and `#` comments are
skipped. Like `rafs.mapped`, this module touches a file so that the builder and the daemon
read the one format the same way.
"""

from __future__ import annotations

from rafs.errors import ConfigError


def read_path_list(path: str) -> tuple[bytes, ...]:
    """The paths listed in `path`; `ConfigError` naming the file if it cannot be read."""
    try:
        with open(path, "rb") as file:
            lines = [line.strip() for line in file.read().splitlines()]
    except OSError as error:
        raise ConfigError(f"--prefetch-files {path}: {error.strerror}") from None
    return tuple(line for line in lines if line and not line.startswith(b"#"))
