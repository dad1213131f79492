"""A real pull-through mirror (docker-registry 2.8, `proxy: remoteurl:`) in front of the origin.

The mirror reaches the origin only through the benchmarks' link shaper (200 Mbit/s, 10 ms RTT),
which counts the bytes that crossed the origin's link as they stream: an abandoned copy costs
what was in flight, as on a real link (on bare loopback it would cost megabytes per millisecond). What the mirror does, measured here: a `Range` GET for a blob it has not cached
is answered `200` with the whole blob, and each such request while it caches pulls a copy of
its own from the origin; a `HEAD` with a range answers `200` then, `206` once cached.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from benchmarks.coldstart_services import Shaper
from daemon.storage.options import Mirror
from daemon.storage.registry import RegistryClient, RegistryOptions
from daemon.storage.transport import HttpTransport, range_header, slice_range
from rafs.oci import ImageReference, sha256_digest
from tests.registry.images import push_image, sample_image
from tests.registry_fixture import RunningRegistry, start_registry

BLOB_BYTES = 16 << 20
# What one abandoned copy costs the origin link: the mirror's copy for a request we hang up on
# runs until its next write fails; measured ~1.1 MB at 200 Mbit/s (each host's first contact
# with a cold blob costs one, whatever it asks). A copy read whole would cost the blob.
ABANDONED_COPY_BYTES = 2 << 20
# How many whole copies eight hosts' first contacts may cost: two. docker-registry 2.8 looks in
# its cache, pings the origin under a lock (one request at a time, an origin round trip each),
# then checks for a copy in flight; eight requests arriving together queue on that lock, and one
# that looked before the first copy committed and checks after it finished starts a second
# (`proxyblobstore.go`; measured 1.1x or 2.1x the blob with two probes per host). A race inside
# the registry that no client can close; warming the mirror avoids it. Without the gate every
# one of the 32 reads would stream the cold blob: up to 33x.
MANY_HOSTS_WHOLE_COPIES = 2


@dataclass
class PullThrough:
    origin_link: Shaper  # between the mirror and the origin registry
    mirror: RunningRegistry
    ref: ImageReference  # as the daemon names it: the origin's host, reached without the mirror
    blob: bytes
    digest: str

    def client(self, cold_wait_s: float = 60.0) -> RegistryClient:
        options = RegistryOptions(
            docker_config="",
            mirrors=(Mirror(self.mirror.host),),
            mirror_cold_wait_s=cold_wait_s,
            mirror_probe_interval_s=0.05,
        )
        return RegistryClient(options)

    def origin_bytes(self) -> int:
        return self.origin_link.sample_after().down


@pytest.fixture
def pull_through(registry: RunningRegistry, tmp_path: Path) -> Iterator[PullThrough]:
    link = Shaper(registry.host, rtt_ms=10, rate_mbit=200, series_path=tmp_path / "link.jsonl")
    mirror = None
    try:
        mirror = start_registry(tmp_path / "mirror", remote_url=f"http://{link.host}")
        blob = os.urandom(BLOB_BYTES)
        digest = sha256_digest(blob)
        ref = ImageReference.parse(f"{registry.host}/demo/pulled")
        plain = RegistryClient(RegistryOptions(docker_config=""))
        plain.push_blob(ref, digest, blob)
        plain.close()
        yield PullThrough(link, mirror, ref, blob, digest)
    finally:
        if mirror is not None:
            mirror.stop()
        link.stop()


def test_a_cold_pull_through_mirror_answers_a_range_with_the_whole_blob(pull_through: PullThrough) -> None:
    """What the daemon must cope with; and `slice_range` reads such an answer only as far as needed."""
    url = f"{pull_through.mirror.url}/v2/demo/pulled/blobs/{pull_through.digest}"
    transport = HttpTransport()
    try:
        got: list[bytes] = []
        response = transport.request(
            "GET", url, headers=range_header(1000, 4096),
            on_success=lambda r: got.append(slice_range(transport, r, 1000, 4096)),
        )  # fmt: skip
        assert response.status_code == 200 and response.headers["Content-Length"] == str(BLOB_BYTES)
        assert got == [pull_through.blob[1000:5096]]
        assert response.raw.closed, "the rest of the blob was not drained: the connection was dropped"
    finally:
        transport.close()


def test_the_first_range_waits_for_the_mirror_to_cache_the_blob(pull_through: PullThrough) -> None:
    client = pull_through.client()
    try:
        offset = BLOB_BYTES - 10_000
        assert (
            client.read_blob_range(pull_through.ref, pull_through.digest, offset, 5000)
            == (pull_through.blob[offset : offset + 5000])
        )
        gate = client.mirrors[0].gate
        assert gate.probes >= 2  # one found it cold (and set the mirror caching it), a later one ready
        answered = requests.get(
            f"{pull_through.mirror.url}/v2/demo/pulled/blobs/{pull_through.digest}", headers=range_header(0, 10)
        )
        assert answered.status_code == 206, "the mirror has it cached now"
    finally:
        client.close()
    # the mirror's own caching copy, plus at most one abandoned copy for each probe that found
    # the blob cold (the probes back off while it caches): not a copy per range
    assert pull_through.origin_bytes() <= BLOB_BYTES + gate.probes * ABANDONED_COPY_BYTES


def test_many_hosts_first_ranges_of_one_blob_pull_it_about_once(pull_through: PullThrough) -> None:
    """Eight clients (eight hosts' daemons) with four threads each ask for ranges all at once."""
    clients = [pull_through.client() for _ in range(8)]
    failures: list[BaseException] = []
    start = threading.Barrier(len(clients) * 4)

    def read(client: RegistryClient, offset: int) -> None:
        try:
            start.wait()
            got = client.read_blob_range(pull_through.ref, pull_through.digest, offset, 65536)
            assert got == pull_through.blob[offset : offset + 65536]
        except BaseException as error:  # reported below, in the test's thread
            failures.append(error)

    threads = [
        threading.Thread(target=read, args=(client, (number * 4 + part) * (BLOB_BYTES // 40)))
        for number, client in enumerate(clients)
        for part in range(4)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for client in clients:
            client.close()
    assert not failures, failures[0]
    assert not any(thread.is_alive() for thread in threads)
    assert all(client.mirrors[0].gate.probes <= 10 for client in clients)  # one at a time per host, backing off
    probes = sum(client.mirrors[0].gate.probes for client in clients)
    assert pull_through.origin_bytes() <= MANY_HOSTS_WHOLE_COPIES * BLOB_BYTES + probes * ABANDONED_COPY_BYTES


def test_a_mirror_that_cannot_cache_the_blob_is_passed_by(pull_through: PullThrough) -> None:
    pull_through.origin_link.stop()  # the mirror cannot reach the origin
    client = pull_through.client(cold_wait_s=0.3)
    try:
        assert client.read_blob_range(pull_through.ref, pull_through.digest, 0, 100) == pull_through.blob[:100]
    finally:
        client.close()


def test_nydusify_warm_leaves_every_blob_cached(registry: RunningRegistry, tmp_path: Path) -> None:
    from builder.nydusify import main

    mirror = start_registry(tmp_path / "warm-mirror", remote_url=registry.url)
    try:
        image = sample_image()
        ref = ImageReference.parse(f"{registry.host}/demo/warmed:v1")
        plain = RegistryClient(RegistryOptions(docker_config=""))
        push_image(plain, ref, image)
        plain.close()
        digests = [sha256_digest(image.config), *(sha256_digest(layer) for layer in image.layers)]
        url = f"{mirror.url}/v2/demo/warmed/blobs/"
        assert requests.get(url + digests[-1], headers=range_header(0, 1)).status_code == 200  # cold
        assert main(["warm", "--target", str(ref), "--mirror", f"http://{mirror.host}", "--timeout", "60"]) == 0
        for digest in digests:
            assert requests.get(url + digest, headers=range_header(0, 1)).status_code == 206
    finally:
        mirror.stop()


def test_a_blob_size_goes_past_a_mirror_that_has_not_cached_the_blob(pull_through: PullThrough) -> None:
    """docker-registry answers a HEAD of a blob it lacks by copying the whole blob from the origin
    (and discarding it); a size asked for before the mirror serves the blob goes to the origin."""
    client = pull_through.client()
    try:
        assert client.blob_size(pull_through.ref, pull_through.digest) == BLOB_BYTES
    finally:
        client.close()
    assert pull_through.origin_bytes() < 4096  # the mirror's own hello to the origin; a HEAD there: 2 copies
