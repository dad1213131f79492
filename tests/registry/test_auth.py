"""Basic and Bearer auth against a real registry: right credentials work, wrong ones fail fast."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.storage.options import HttpOptions
from daemon.storage.registry import RegistryAuthError, RegistryClient, RegistryOptions
from rafs.oci import ImageReference, sha256_digest
from tests.registry.faultproxy import FaultProxy
from tests.registry.images import push_image, sample_image
from tests.registry_fixture import RunningRegistry, TokenRegistry

OPENED: list[RegistryClient] = []


def client_of(options: RegistryOptions) -> RegistryClient:
    """A client closed when the test ends (its pooled connections would be left open)."""
    client = RegistryClient(options)
    OPENED.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


FAST = HttpOptions(timeout_s=10, connect_timeout_s=2, retry_limit=3)


def login(running: RunningRegistry, password: str | None = None) -> RegistryClient:
    options = RegistryOptions(
        http=FAST, username=running.username, password=running.password if password is None else password,
        docker_config="",
    )  # fmt: skip
    return client_of(options)


def write_docker_config(directory: Path, host: str, username: str, password: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    path = directory / "config.json"
    path.write_text(json.dumps({"auths": {f"https://{host}/v1/": {"auth": auth}}}))
    return path


def assert_fails_fast(call: object, match: str) -> RegistryAuthError:
    started = time.monotonic()
    with pytest.raises(RegistryAuthError, match=match) as caught:
        call()  # type: ignore[operator]
    assert time.monotonic() - started < 3, "a refused login must not be retried"
    assert "\n" not in str(caught.value)
    return caught.value


# ---- Basic


def test_basic_auth_round_trip(basic_registry: RunningRegistry) -> None:
    client = login(basic_registry)
    ref = ImageReference.parse(f"{basic_registry.host}/private/app")
    image = sample_image()
    assert push_image(client, ref, image) == image.digest
    assert client.get_image_manifest(ref).digest == image.digest
    layer = image.layers[0]
    assert client.read_blob_range(ref, sha256_digest(layer), 10, 20) == layer[10:30]


def test_basic_credentials_from_docker_config(basic_registry: RunningRegistry, tmp_path: Path) -> None:
    config = write_docker_config(
        tmp_path / "docker", basic_registry.host, basic_registry.username, basic_registry.password
    )
    client = client_of(RegistryOptions(http=FAST, docker_config=str(config)))
    ref = ImageReference.parse(f"{basic_registry.host}/private/from-config")
    data = b"credentials came from config.json"
    assert client.push_blob(ref, sha256_digest(data), data)
    assert client.read_blob(ref, sha256_digest(data)) == data


def test_basic_without_or_with_wrong_credentials(basic_registry: RunningRegistry) -> None:
    ref = ImageReference.parse(f"{basic_registry.host}/private/app")
    anonymous = client_of(RegistryOptions(http=FAST, docker_config=""))
    assert_fails_fast(lambda: anonymous.get_manifest(ref), "asks for a login and none is configured")
    wrong = login(basic_registry, password="not-the-password")
    error = assert_fails_fast(lambda: wrong.get_manifest(ref), "refused the credentials")
    assert error.repo == "private/app" and basic_registry.host in error.url


def test_nydusify_reports_wrong_credentials_in_one_line(basic_registry: RunningRegistry, tmp_path: Path) -> None:
    proxy = FaultProxy(basic_registry.host)  # only to count what reaches the registry
    try:
        config = write_docker_config(tmp_path / "docker", proxy.host, "alice", "wrong")
        environment = {**os.environ, "DOCKER_CONFIG": str(config.parent)}
        result = subprocess.run(
            [sys.executable, "-m", "builder.nydusify", "convert", "--source", f"{proxy.host}/private/app",
             "--target", f"{proxy.host}/private/app:nydus"],
            capture_output=True, text=True, env=environment, timeout=60, cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
    finally:
        proxy.stop()
    assert result.returncode == RegistryAuthError.exit_code, result.stderr
    assert result.stderr.count("\n") == 1 and "refused the credentials" in result.stderr, result.stderr
    assert proxy.count("GET", "/manifests/") == 2, "one anonymous try, one with the login, no retries"


# ---- Bearer


def test_bearer_round_trip_caches_tokens(token_registry: TokenRegistry) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    client = login(token_registry)
    ref = ImageReference.parse(f"{token_registry.host}/team/app")
    image = sample_image()
    assert push_image(client, ref, image) == image.digest
    pushes = len(tokens.requests)
    assert pushes <= 2, tokens.requests  # one token for pull,push (maybe one more for the first pull-scope HEAD)
    assert client.get_image_manifest(ref).digest == image.digest
    for layer in image.layers:
        assert client.read_blob_range(ref, sha256_digest(layer), 0, 16) == layer[:16]
    assert len(tokens.requests) <= pushes + 1, "pull reuses one cached token"
    assert all(request.get("service") == "test-registry" for request in tokens.requests)
    assert {request.get("scope") for request in tokens.requests} <= {
        "repository:team/app:pull",
        "repository:team/app:pull,push",
    }


def test_bearer_token_renewed_after_expiry(token_registry: TokenRegistry) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    tokens.lifetime_s = 2  # cached for one second (renewed at half its life)
    client = login(token_registry)
    ref = ImageReference.parse(f"{token_registry.host}/team/expiring")
    data = b"short-lived tokens"
    client.push_blob(ref, sha256_digest(data), data)
    before = len(tokens.requests)
    client.read_blob(ref, sha256_digest(data))
    client.read_blob(ref, sha256_digest(data))
    cached = len(tokens.requests)
    time.sleep(1.2)
    client.read_blob(ref, sha256_digest(data))
    assert cached - before <= 1
    assert len(tokens.requests) == cached + 1


def test_bearer_wrong_password_and_anonymous(token_registry: TokenRegistry) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    ref = ImageReference.parse(f"{token_registry.host}/team/app")
    wrong = login(token_registry, password="nope")
    assert_fails_fast(lambda: wrong.get_manifest(ref), "token server refused user 'alice'")
    assert len(tokens.requests) == 1, "a refused login is asked once"
    anonymous = client_of(RegistryOptions(http=FAST, docker_config=""))
    assert_fails_fast(lambda: anonymous.get_manifest(ref), "refused the credentials")


def test_given_registry_token_is_used_as_is(token_registry: TokenRegistry) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    ref = ImageReference.parse(f"{token_registry.host}/team/given")
    token = tokens.sign("robot", [{"type": "repository", "name": "team/given", "actions": ["pull", "push"]}])
    client = client_of(RegistryOptions(http=FAST, registry_token=token, docker_config=""))
    data = b"pushed with a token from the config"
    assert client.push_blob(ref, sha256_digest(data), data)
    assert client.read_blob(ref, sha256_digest(data)) == data
    assert tokens.requests == []
