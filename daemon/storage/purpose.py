"""What a backend read is for: on demand or prefetch, and whether it must go to the origin.

The registry client needs to know this (Dragonfly's proxy is told a priority per request, a
rate-limited prefetch gives up where an on-demand read goes on, and the second try of a chunk
that failed its digest must skip the mirror or proxy that sent it), but the `BlobBackend`
interface is "bytes a..b of blob X" and stays that way. So the caller states the purpose in a
context variable around its calls: `trio.to_thread.run_sync` runs the worker thread in a copy
of the caller's context, and code that sets nothing reads the default (on demand, any route).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


class ReadPurpose(enum.Enum):
    ON_DEMAND = "on_demand"  # someone is waiting (a FUSE read, or readahead right behind one)
    PREFETCH = "prefetch"  # background work that may be dropped


@dataclass(frozen=True)
class ReadContext:
    purpose: ReadPurpose = ReadPurpose.ON_DEMAND
    origin_only: bool = False  # skip mirrors and proxy: what they sent was wrong


DEFAULT_READ = ReadContext()
_current: ContextVar[ReadContext | None] = ContextVar("read_context", default=None)


def current_read() -> ReadContext:
    """The purpose of the reads made here and now."""
    return _current.get() or DEFAULT_READ


@contextmanager
def reading(*, purpose: ReadPurpose | None = None, origin_only: bool | None = None) -> Iterator[ReadContext]:
    """Reads inside the block are for `purpose` (and origin-only if asked); restored after."""
    context = current_read()
    changes: dict[str, object] = {}
    if purpose is not None:
        changes["purpose"] = purpose
    if origin_only is not None:
        changes["origin_only"] = origin_only
    token = _current.set(dataclasses.replace(context, **changes))  # type: ignore[arg-type]
    try:
        yield current_read()
    finally:
        _current.reset(token)
