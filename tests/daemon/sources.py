"""`ChunkSource`s for tests without a mount: made with their readahead, run in a nursery."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from daemon.chunks import ChunkSource
from daemon.readahead import Readahead
from daemon.storage.backend import BlobBackend
from daemon.storage.cache import ChunkCache
from rafs.bootstrap import Bootstrap


def make_source(
    bootstrap: Bootstrap,
    backend: BlobBackend,
    cache: ChunkCache,
    *,
    amplify_io: int = 0,
    whole_file_max: int = 0,
    window_max: int = 0,
    **options: int | bool,
) -> tuple[ChunkSource, Readahead]:
    """A source and its readahead; by default no readahead at all, so each test turns on what it tests."""
    source = ChunkSource(bootstrap, backend, cache, **options)  # type: ignore[arg-type]
    readahead = Readahead(
        bootstrap,
        source,
        amplify_io=amplify_io,
        whole_file_max=whole_file_max,
        window_max=window_max,
    )
    return source, readahead


@asynccontextmanager
async def running(source: ChunkSource) -> AsyncIterator[trio.Nursery]:
    """`source` with its fetch workers running; everything started in the nursery stops on exit."""
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        yield nursery
        nursery.cancel_scope.cancel()


async def idle(source: ChunkSource) -> None:
    """Until no fetch is queued or in flight (background work done)."""
    with trio.fail_after(10):
        while source.in_flight or source.pending_count():
            await trio.sleep(0.005)
