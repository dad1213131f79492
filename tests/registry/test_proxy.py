"""Dragonfly's proxy, played by the stand-in (`benchmarks.dragonfly_standin`), before a real registry.

The origin sits behind a `FaultProxy`, so each test sees which reads reached the origin itself:
through the stand-in, a read reaches it only as the stand-in's piece fetch (`Range` of a whole
piece); straight from the client, it is the client's own range.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from benchmarks.dragonfly_standin import DragonflyStandIn
from daemon.config import parse_config
from daemon.storage.options import Proxy
from daemon.storage.purpose import ReadPurpose, reading
from daemon.storage.registry import RegistryClient, RegistryConfig, RegistryOptions
from daemon.storage.registry.proxy import ProxyForbidden, ProxyRateLimited, ProxyRoute, ProxyUnavailable
from daemon.storage.transport import RETRY_STATUSES
from rafs.oci import ImageReference, sha256_digest
from tests.registry.faultproxy import FaultProxy
from tests.registry_fixture import RunningRegistry

BLOB = os.urandom(3 << 20)
DIGEST = sha256_digest(BLOB)
PIECE = 1 << 20


@dataclass
class Rig:
    origin: FaultProxy  # in front of the registry: what reached the origin
    standin: DragonflyStandIn
    ref: ImageReference

    def client(self, **proxy: object) -> RegistryClient:
        config = Proxy(self.standin.url, ping_url=self.standin.ping_url, **proxy)  # type: ignore[arg-type]
        return RegistryClient(RegistryOptions(docker_config="", proxy=config))

    def origin_gets(self) -> int:
        return self.origin.count("GET", "/blobs/")


@pytest.fixture
def rig(registry: RunningRegistry) -> Iterator[Rig]:
    origin = FaultProxy(registry.host)
    standin = DragonflyStandIn(piece_bytes=PIECE)
    try:
        ref = ImageReference.parse(f"{origin.host}/demo/proxied")
        plain = RegistryClient(RegistryOptions(docker_config=""))
        plain.push_blob(ref, DIGEST, BLOB)
        plain.close()
        yield Rig(origin, standin, ref)
    finally:
        standin.stop()
        origin.stop()


def test_reads_go_through_a_healthy_proxy_with_dragonfly_headers(rig: Rig) -> None:
    client = rig.client()
    try:
        assert client.health_checks()[0].check() is True
        assert client.read_blob_range(rig.ref, DIGEST, 10, 1000) == BLOB[10:1010]
        with reading(purpose=ReadPurpose.PREFETCH):
            assert client.read_blob_range(rig.ref, DIGEST, PIECE + 5, 100) == BLOB[PIECE + 5 : PIECE + 105]
        assert client.blob_size(rig.ref, DIGEST) == len(BLOB)
    finally:
        client.close()
    seen = rig.standin.headers_seen()
    assert [h.get("X-Dragonfly-Priority") for h in seen] == ["6", "3", "6"]
    assert all(h.get("X-Dragonfly-Use-P2P") == "true" for h in seen)
    # the origin saw the stand-in's two piece fetches (and the HEAD it forwarded), no range of ours
    assert rig.origin_gets() == 2 and rig.standin.stats.upstream_requests == 3


def test_many_readers_of_one_range_cost_the_origin_one_piece(rig: Rig) -> None:
    clients = [rig.client() for _ in range(4)]
    try:
        for client in clients:
            assert client.read_blob_range(rig.ref, DIGEST, 0, 4096) == BLOB[:4096]
    finally:
        for client in clients:
            client.close()
    assert rig.origin_gets() == 1


@pytest.mark.parametrize("fallback", [True, False])
@pytest.mark.logs_warnings  # provoked on purpose
def test_an_unhealthy_proxy_is_passed_by_or_fails(rig: Rig, fallback: bool) -> None:
    client = rig.client(fallback=fallback)
    check = client.health_checks()[0]
    try:
        rig.standin.fail_pings = True
        assert check.check() is False and not check.healthy
        if fallback:
            assert client.read_blob_range(rig.ref, DIGEST, 0, 100) == BLOB[:100]
            assert rig.standin.stats.requests == 0 and rig.origin_gets() == 1
        else:
            with pytest.raises(ProxyUnavailable, match="does not answer its ping"):
                client.read_blob_range(rig.ref, DIGEST, 0, 100)
            assert rig.origin_gets() == 0
        rig.standin.fail_pings = False
        assert check.check() is True and check.healthy
        assert client.read_blob_range(rig.ref, DIGEST, 200, 100) == BLOB[200:300]
        assert rig.standin.stats.requests == 1
    finally:
        client.close()


@pytest.mark.parametrize("fallback", [True, False])
def test_a_dying_proxy_is_passed_by_or_fails(rig: Rig, fallback: bool) -> None:
    client = rig.client(fallback=fallback)
    try:
        assert client.read_blob_range(rig.ref, DIGEST, 0, 100) == BLOB[:100]
        rig.standin.inject("drop")  # the connection cut mid-request
        rig.standin.inject("500")
        for offset in (1000, 2000):
            if fallback:
                assert client.read_blob_range(rig.ref, DIGEST, offset, 100) == BLOB[offset : offset + 100]
            else:
                with pytest.raises(ProxyUnavailable, match="fallback is off"):
                    client.read_blob_range(rig.ref, DIGEST, offset, 100)
        rig.standin.die()  # then gone for good: connections refused
        if fallback:
            assert client.read_blob_range(rig.ref, DIGEST, PIECE * 2, 100) == BLOB[PIECE * 2 : PIECE * 2 + 100]
            assert rig.origin_gets() == 1 + 3  # the stand-in's first piece, then our three ranges
        else:
            with pytest.raises(ProxyUnavailable):
                client.read_blob_range(rig.ref, DIGEST, PIECE * 2, 100)
            assert rig.origin_gets() == 1
    finally:
        client.close()


def test_a_proxy_made_403_is_not_retried_anywhere(rig: Rig) -> None:
    client = rig.client()
    try:
        rig.standin.inject("403")
        with pytest.raises(ProxyForbidden):
            client.read_blob_range(rig.ref, DIGEST, 0, 100)
        assert rig.standin.stats.requests == 1 and rig.origin_gets() == 0
    finally:
        client.close()


def test_a_proxy_made_429_sends_demand_to_the_origin_and_stops_prefetch(rig: Rig) -> None:
    client = rig.client()
    try:
        rig.standin.inject("429", times=2)
        assert client.read_blob_range(rig.ref, DIGEST, 0, 100) == BLOB[:100]
        assert rig.origin_gets() == 1  # ours, straight to the origin
        with reading(purpose=ReadPurpose.PREFETCH), pytest.raises(ProxyRateLimited):
            client.read_blob_range(rig.ref, DIGEST, 100, 100)
        assert rig.origin_gets() == 1 and rig.standin.stats.requests == 2
    finally:
        client.close()


def test_origin_only_reads_skip_the_proxy(rig: Rig) -> None:
    client = rig.client()
    try:
        with reading(origin_only=True):
            assert client.read_blob_range(rig.ref, DIGEST, 0, 100) == BLOB[:100]
        assert rig.standin.stats.requests == 0
    finally:
        client.close()


def test_use_http_rewrites_only_https() -> None:
    route = ProxyRoute(Proxy("http://p:4001", use_http=True), health=None)  # type: ignore[arg-type]
    assert route.url_for("https://r.example/v2/x") == "http://r.example/v2/x"
    assert route.url_for("http://r.example/v2/x") == "http://r.example/v2/x"
    assert ProxyRoute(Proxy("http://p"), None).url_for("https://r/v2/") == "https://r/v2/"  # type: ignore[arg-type]
    assert 429 in RETRY_STATUSES  # the proxy's own 429 must not be retried at the proxy: see `_send`


def test_a_nydus_style_dragonfly_config_loads() -> None:
    """As d7y.io's Nydus integration page writes it (ports of its older pages)."""
    config = parse_config(
        {
            "device": {
                "backend": {
                    "type": "registry",
                    "config": {
                        "host": "registry.example.com",
                        "repo": "library/app",
                        "timeout": 5,
                        "connect_timeout": 5,
                        "retry_limit": 2,
                        "proxy": {
                            "url": "http://127.0.0.1:65001",
                            "ping_url": "http://127.0.0.1:40901/server/ping",
                            "fallback": True,
                            "check_interval": 5,
                            "use_http": False,
                        },
                    },
                },
                "cache": {"type": "blobcache", "config": {"work_dir": "/var/lib/nydus/cache"}},
            },
            "mode": "direct",
            "digest_validate": False,
            "fs_prefetch": {"enable": True, "threads_count": 4},
        }
    )
    assert isinstance(config.backend, RegistryConfig)
    client = RegistryClient(config.backend.options)
    try:
        assert client.proxy is not None and client.proxy.proxies["https"] == "http://127.0.0.1:65001"
        assert [check.ping_url for check in client.health_checks()] == ["http://127.0.0.1:40901/server/ping"]
    finally:
        client.close()
