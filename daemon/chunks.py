"""`ChunkSource`: the trio side of the read path, from chunk slices to bytes.

A hit is one `pread` of verified, uncompressed bytes from the cache (small ones in the page
cache on the event loop, where that is cheaper than a thread round trip; the others in a worker
thread). A miss
becomes a *job*: a run of chunks stored back to back in one blob, fetched by one range request.
Jobs wait in three queues, served in this order:

- `DEMAND`: chunks a FUSE read is waiting for;
- `READAHEAD`: chunks `daemon.readahead` expects to be read soon (among them the blob-order
  neighbours of a demand miss, in a request of their own right behind it, so the reader waits
  for its own bytes only);
- `PREFETCH`: the prefetch list, paced by `bandwidth_rate`.

`fetch_workers` tasks take jobs and run each in a worker thread (`daemon.storage.fetch`), so
that many range requests are in flight at once: enough to fill a link's bandwidth x RTT. The
first `demand_workers` of them take only demand jobs, so an on-demand read never waits behind
background work for a worker; the others take whatever is most urgent, so the link is never
idle while prefetch or readahead has work. A demand read of a chunk queued in a background job
that has not started promotes that job to the demand queue.

Every chunk being fetched has one *flight* in `_flights`, so concurrent wants of one chunk are
fetched once: the first claims it, later readers wait on its event and share its result.
Claiming has no `await` between the check and the insert (the event loop runs one task at a
time between awaits), so two tasks cannot both claim one chunk. Chunks that ride along
optionally (readahead, prefetch) may fail without being anybody's error: a reader that needs one
whose fetch failed fetches it again itself.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

import trio

from daemon.storage.backend import BackendError, BlobBackend
from daemon.storage.cache import ChunkCache, ChunkKey
from daemon.storage.fetch import ChunkRequest, ChunkResult, fetch_chunks, merge_ranges, run_bytes
from daemon.storage.purpose import ReadPurpose, reading
from daemon.timeline import Timeline
from rafs.bootstrap import Bootstrap
from rafs.digest import chunk_digest
from rafs.errors import ChunkDigestMismatch, NydusError
from rafs.records import ChunkRecord, ChunkSlice

log = logging.getLogger(__name__)

# Cache hits of at most this many bytes are read on the event loop if they are in the page cache
# (`RWF_NOWAIT`: the loop never waits for the disk): a `pread` of a page-cached chunk costs a few
# microseconds, a `trio.to_thread` round trip ~100-200 us on the 2-core VM.
INLINE_HIT_BYTES = 128 << 10


class Priority(enum.IntEnum):
    """Job queues, most urgent first."""

    DEMAND = 0
    READAHEAD = 1
    PREFETCH = 2


@dataclass(eq=False)
class _Job:
    """One range request to make: a run of chunks, the ones nobody waits for marked optional."""

    run: list[ChunkRequest]
    priority: Priority
    optional: set[ChunkKey]
    started: bool = False


@dataclass(eq=False)
class Flight:
    """One chunk being fetched; `result` is set before `done` fires."""

    job: _Job
    done: trio.Event = field(default_factory=trio.Event)
    result: ChunkResult | None = None


@dataclass
class ChunkStats:
    cache_hits: int = 0
    cache_misses: int = 0  # chunks a read needed that were not cached (blobcache `total` = hits + misses)
    fetched_chunks: int = 0
    fetched_bytes: int = 0
    range_requests: int = 0
    shared_waits: int = 0
    promoted_jobs: int = 0
    errors: int = 0
    max_in_flight: int = 0
    requests_by_priority: dict[str, int] = field(default_factory=lambda: {p.name.lower(): 0 for p in Priority})


class _JobQueues:
    """Three FIFO queues; `get` hands out the most urgent job a worker may take."""

    def __init__(self) -> None:
        self._queues: dict[Priority, deque[_Job]] = {priority: deque() for priority in Priority}
        self._lot = trio.lowlevel.ParkingLot()

    def put(self, job: _Job) -> None:
        self._queues[job.priority].append(job)
        self._lot.unpark_all()

    def move(self, job: _Job, priority: Priority) -> None:
        """Requeue a job not yet started at `priority`; its entry in the old queue is skipped."""
        job.priority = priority
        self.put(job)

    def may_hold(self, priority: Priority) -> bool:
        """False only if no job waits at `priority` (cheap: stale entries count)."""
        return bool(self._queues[priority])

    def pending(self, priority: Priority) -> int:
        return sum(1 for job in self._queues[priority] if not job.started and job.priority == priority)

    def _take(self, demand_only: bool) -> _Job | None:
        for priority in Priority:
            queue = self._queues[priority]
            while queue:
                job = queue.popleft()
                if not job.started and job.priority == priority:  # else: started, or promoted away
                    return job
            if demand_only:
                return None
        return None

    async def get(self, demand_only: bool) -> _Job:
        while (job := self._take(demand_only)) is None:
            await self._lot.park()
        job.started = True
        return job


class _Pacer:
    """`bandwidth_rate` for prefetch: jobs start no faster than the rate allows (0 = unlimited)."""

    def __init__(self, rate_bytes_per_s: int) -> None:
        self.rate_bytes_per_s = rate_bytes_per_s
        self._next_start = 0.0

    async def wait(self, nbytes: int) -> None:
        if not self.rate_bytes_per_s:
            return
        now = trio.current_time()
        start = max(now, self._next_start)
        self._next_start = start + nbytes / self.rate_bytes_per_s
        await trio.sleep_until(start)


class ChunkSource:
    """Serves chunk slices of one bootstrap from a cache, or a backend on a miss.

    `run` must be started in a nursery (`await nursery.start(source.run)`) before misses can be
    served: it owns the fetch workers and any background thread the read path needs.
    """

    def __init__(
        self,
        bootstrap: Bootstrap,
        backend: BlobBackend,
        cache: ChunkCache,
        *,
        validate: bool = False,
        merging_size: int = 1 << 20,
        fetch_workers: int = 8,
        demand_workers: int = 2,
        bandwidth_rate: int = 0,
        cache_threads: int = 8,
        timeline: Timeline | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.backend = backend
        self.cache = cache
        self.validate = validate
        self.merging_size = merging_size
        self.fetch_workers = max(1, fetch_workers)
        self.demand_workers = min(max(0, demand_workers), self.fetch_workers - 1) if self.fetch_workers > 1 else 0
        self.timeline = timeline
        self.stats = ChunkStats()
        self.in_flight = 0
        self.along: Callable[[list[ChunkRequest]], list[ChunkRequest]] = lambda misses: []
        self._queues = _JobQueues()
        self._pacer = _Pacer(bandwidth_rate)
        self._flights: dict[ChunkKey, Flight] = {}
        self._fetch_limiter = trio.CapacityLimiter(self.fetch_workers)
        self._cache_limiter = trio.CapacityLimiter(cache_threads)
        self._nursery: trio.Nursery | None = None
        cache.prepare(blob.blob_id for blob in bootstrap.blobs)

    # -- the chunk noun --------------------------------------------------------------------------

    def request(self, chunk_index: int, record: ChunkRecord) -> ChunkRequest:
        """The one place a `ChunkRequest` is made."""
        return ChunkRequest(chunk_index, record, self.bootstrap.blobs[record.blob_index])

    def absent(self, request: ChunkRequest) -> bool:
        """Neither cached nor being fetched: worth asking for."""
        return request.key not in self._flights and not self.cache.has(request.key, request.record.digest)

    # -- the background owner --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the fetch workers until cancelled (at unmount)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for number in range(self.fetch_workers):
                nursery.start_soon(self._worker, number < self.demand_workers)
            task_status.started()
            await trio.sleep_forever()

    def in_thread(self, function: Callable[[], object]) -> None:
        """Run `function` in a worker thread owned by this source's nursery (abandoned at unmount)."""
        if self._nursery is not None:
            self._nursery.start_soon(partial(trio.to_thread.run_sync, function, abandon_on_cancel=True))

    async def _worker(self, demand_only: bool) -> None:
        while True:
            job = await self._queues.get(demand_only)
            if job.priority == Priority.PREFETCH:
                await self._pacer.wait(run_bytes(job.run))
            await self._execute(job)

    async def _execute(self, job: _Job) -> None:
        results: dict[ChunkKey, ChunkResult] = {}
        started = time.time()
        self.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.in_flight)
        in_flight = self.in_flight
        try:
            results = await trio.to_thread.run_sync(
                self._load, job, limiter=self._fetch_limiter, abandon_on_cancel=True
            )
        except Exception as error:  # a bug, or a backend raising what it should not: these reads
            # fail (EIO); the worker and every other read go on, rather than the whole mount dying
            log.exception("fetch of %d chunk(s) of blob %s failed unexpectedly", len(job.run), job.run[0].blob.blob_id)
            failure = BackendError(f"unexpected error while fetching: {error!r}")
            results = {request.key: failure for request in job.run}
        finally:
            self.in_flight -= 1
            for request in job.run:
                flight = self._flights.pop(request.key, None)
                if flight is not None:
                    result = results.get(request.key)
                    flight.result = BackendError("fetch cancelled") if result is None else result
                    flight.done.set()
        ok = all(isinstance(result, bytes) for result in results.values())
        nbytes = run_bytes(job.run)
        self.stats.range_requests += 1
        self.stats.requests_by_priority[job.priority.name.lower()] += 1
        self.stats.fetched_chunks += len(job.run)
        self.stats.fetched_bytes += nbytes
        if self.timeline is not None:
            self.timeline.request_done(started, nbytes, job.priority.name.lower(), ok, in_flight)

    def _load(self, job: _Job) -> dict[ChunkKey, ChunkResult]:
        """In a worker thread: chunks another daemon cached meanwhile, then fetch the rest."""
        self.cache.refresh(job.run[0].blob.blob_id)
        results: dict[ChunkKey, ChunkResult] = {}
        missing: list[ChunkRequest] = []
        for request in job.run:
            data = self._read_whole(request)
            if data is None:
                missing.append(request)
            else:
                results[request.key] = data
        if missing:
            # The backend hears a job's purpose (Dragonfly's proxy is told a priority; a rate
            # limit stops prefetch only); readahead rides with demand, as in Nydus.
            purpose = ReadPurpose.PREFETCH if job.priority == Priority.PREFETCH else ReadPurpose.ON_DEMAND
            with reading(purpose=purpose):
                results.update(
                    fetch_chunks(
                        self.backend,
                        self.cache,
                        missing,
                        digester=self.bootstrap.digester,
                        merging_size=run_bytes(job.run),
                        optional=job.optional,
                    )
                )
        return results

    # -- wanting chunks ---------------------------------------------------------------------------

    def want(self, requests: Iterable[ChunkRequest], priority: Priority) -> list[Flight]:
        """Queue the absent ones of `requests` for fetching in the background; their flights.

        Nobody waits for them yet, so their failures are nobody's error (all are optional).
        """
        claimed = list({request.key: request for request in requests if self.absent(request)}.values())
        return self._enqueue(claimed, priority, {request.key for request in claimed}, self.merging_size)

    def _enqueue(
        self, requests: Sequence[ChunkRequest], priority: Priority, optional: set[ChunkKey], limit: int
    ) -> list[Flight]:
        """Claim a flight for each of `requests` (none in flight) and queue them in runs of at most `limit`."""
        flights: list[Flight] = []
        for run in merge_ranges(requests, limit):
            job = _Job(run, priority, {request.key for request in run if request.key in optional})
            for request in run:
                flight = self._flights[request.key] = Flight(job)
                flights.append(flight)
            self._queues.put(job)
        return flights

    async def fetch(self, requests: Iterable[ChunkRequest], priority: Priority) -> int:
        """Fetch the absent ones of `requests` at `priority` and wait for them; how many failed."""
        return await self.settle(self.want(requests, priority))

    async def settle(self, flights: Iterable[Flight]) -> int:
        """Wait for `flights` (from `want`) to land; how many failed."""
        failed = 0
        for flight in flights:
            await flight.done.wait()
            failed += isinstance(flight.result, NydusError)
        return failed

    def prefetch_waiting(self) -> bool:
        """Whether any prefetch job may still wait for a worker (cheap; False once none does)."""
        return self._queues.may_hold(Priority.PREFETCH)

    def queued_for_prefetch(self, request: ChunkRequest) -> _Job | None:
        """The prefetch job, not started, that the chunk waits in, if any."""
        flight = self._flights.get(request.key)
        if flight is None or flight.job.started or flight.job.priority != Priority.PREFETCH:
            return None
        return flight.job

    def hurry_prefetch(self, requests: Iterable[ChunkRequest]) -> int:
        """Move the prefetch jobs (not started) holding any of `requests` to the readahead
        queue, ahead of the rest of the prefetch list; how many moved."""
        moved = 0
        for request in requests:
            job = self.queued_for_prefetch(request)
            if job is not None:
                self._queues.move(job, Priority.READAHEAD)
                moved += 1
        self.stats.promoted_jobs += moved
        return moved

    def pending_count(self) -> int:
        """Jobs waiting for a worker, of every priority."""
        return sum(self._queues.pending(priority) for priority in Priority)

    # -- reading ----------------------------------------------------------------------------------

    async def read(self, pieces: Sequence[ChunkSlice]) -> list[bytes]:
        """The bytes of every slice, in order; the first failing chunk's error is raised."""
        out: list[bytes | None] = [None] * len(pieces)
        hits: list[tuple[int, ChunkRequest, ChunkSlice]] = []
        misses: list[tuple[int, ChunkRequest, ChunkSlice]] = []
        for position, piece in enumerate(pieces):
            if piece.record.is_zero:
                out[position] = bytes(piece.length)
                continue
            request = self.request(piece.chunk_index, piece.record)
            if self.cache.has(request.key, request.record.digest):
                hits.append((position, request, piece))
            else:
                misses.append((position, request, piece))
        if hits:
            cached: list[bytes | None] | None = None
            if sum(piece.length for _, _, piece in hits) <= INLINE_HIT_BYTES and not self.validate:
                try:
                    cached = self._read_hits(hits, nowait=True)
                except BlockingIOError:  # not in the page cache: the disk is waited for in a thread
                    cached = None
            if cached is None:
                cached = await trio.to_thread.run_sync(self._read_hits, hits, limiter=self._cache_limiter)
            for item, data in zip(hits, cached, strict=True):
                if data is None:
                    misses.append(item)
                else:
                    out[item[0]] = data
            self.stats.cache_hits += len(hits)
        if misses:
            self.stats.cache_misses += len(misses)
            blocked_at = time.time()
            results = await self._wait_for([request for _, request, _ in misses])
            if self.timeline is not None:
                self.timeline.blocked_read(blocked_at)
            for position, request, piece in misses:
                result = results[request.key]
                if not isinstance(result, bytes):
                    self.stats.errors += 1
                    raise result
                out[position] = result[piece.start : piece.start + piece.length]
        return [part if part is not None else b"" for part in out]

    def _read_hits(
        self, hits: Sequence[tuple[int, ChunkRequest, ChunkSlice]], *, nowait: bool = False
    ) -> list[bytes | None]:
        """Cached slices (None where the cache no longer has one); with `validate`, whole chunks re-hashed."""
        if not self.validate:
            return [
                self.cache.read(request.key, request.record.digest, piece.start, piece.length, nowait=nowait)
                for _, request, piece in hits
            ]
        result: list[bytes | None] = []
        for _, request, piece in hits:
            data = self._read_whole(request)
            result.append(None if data is None else data[piece.start : piece.start + piece.length])
        return result

    def _read_whole(self, request: ChunkRequest) -> bytes | None:
        """A whole cached chunk, re-hashed when `validate` asks for it; None if absent or damaged."""
        record = request.record
        data = self.cache.read(request.key, record.digest, 0, record.uncompressed_size)
        if data is not None and self.validate and chunk_digest(data, self.bootstrap.digester) != record.digest:
            error = ChunkDigestMismatch(
                "cached copy damaged", blob_id=request.blob.blob_id, chunk_index=request.chunk_index
            )
            log.warning("%s: fetching it again", error)
            return None
        return data

    async def _wait_for(self, requests: Sequence[ChunkRequest]) -> dict[ChunkKey, ChunkResult]:
        """Whole chunks a reader needs: claim those nobody fetches (with what rides along), join the others.

        A joined chunk's job that has not started yet moves to the demand queue. A chunk whose
        fetch carried it optionally and failed is fetched again, now as this reader's own.
        """
        unique = list({request.key: request for request in requests}.values())
        flights: dict[ChunkKey, Flight] = {}
        unclaimed: list[ChunkRequest] = []
        for request in unique:
            flight = self._flights.get(request.key)
            if flight is None:
                unclaimed.append(request)
                continue
            flights[request.key] = flight
            self.stats.shared_waits += 1
            if not flight.job.started and flight.job.priority != Priority.DEMAND:
                self._queues.move(flight.job, Priority.DEMAND)
                self.stats.promoted_jobs += 1
        if unclaimed:
            self._enqueue(unclaimed, Priority.DEMAND, set(), self.merging_size)
            for request in unclaimed:
                flights[request.key] = self._flights[request.key]
            # What rides along goes in its own request right behind: the reader waits for its
            # own bytes only, not for the neighbours' transfer.
            self.want(self.along(unclaimed), Priority.READAHEAD)
        results: dict[ChunkKey, ChunkResult] = {}
        again: list[ChunkRequest] = []
        for request in unique:
            flight = flights[request.key]
            await flight.done.wait()
            assert flight.result is not None
            if request.key in flight.job.optional and isinstance(flight.result, NydusError):
                again.append(request)
            else:
                results[request.key] = flight.result
        if again:
            results.update(await self._wait_for(again))
        return results
