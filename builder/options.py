"""What `nydus-image` and `nydusify` share on their command lines: flag types, and the error edge.

Both CLIs turn every project error into one line on stderr and the class's exit code here, so
the two cannot drift apart in how they fail.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from rafs import layout
from rafs.errors import NydusError
from rafs.oci import Platform
from rafs.pathlist import PrefetchEntry, read_prefetch_entries


def chunk_size(text: str) -> int:
    """`--chunk-size`: a power of two between 4 KiB and 16 MiB, decimal or 0x hex."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid chunk size {text!r}") from None
    if not layout.is_valid_chunk_size(value):
        raise argparse.ArgumentTypeError(f"chunk size {text} is not a power of two between 0x1000 and 0x1000000")
    return value


def platform(text: str) -> Platform:
    """`--platform OS/ARCH[/VARIANT]`: which manifest of an image index to take."""
    os_name, _, rest = text.partition("/")
    architecture, _, variant = rest.partition("/")
    if not os_name or not architecture:
        raise argparse.ArgumentTypeError(f"platform {text!r} is not OS/ARCH[/VARIANT]")
    return Platform(os_name, architecture, variant)


def read_prefetch_list(path: str | None) -> tuple[PrefetchEntry, ...]:
    """`--prefetch-files`: the entries in FILE (`rafs.pathlist`); none without the flag."""
    return read_prefetch_entries(path) if path else ()


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line on stderr and exit code 2, like every other error here."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def describe_os_error(error: OSError) -> str:
    """`PATH: reason` (and `-> OTHER` for two-path calls), without Python's `[Errno N]` prefix."""
    reason = error.strerror or str(error)
    if error.filename is None:
        return reason
    where = os.fsdecode(error.filename)
    if error.filename2 is not None:
        where += " -> " + os.fsdecode(error.filename2)
    return f"{where}: {reason}"


def run_with_one_line_errors(prefix: str, run: Callable[[], int]) -> int:
    """Run a command; a project error or OS error becomes one line on stderr and its exit code."""
    try:
        return run()
    except NydusError as error:
        print(f"{prefix}: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        print(f"{prefix}: error: {describe_os_error(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
