"""The pure parts: image references, challenges, docker config logins, backend configs."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from daemon.storage.registry import docker_config_credentials, is_loopback, parse_challenge
from rafs.errors import ConfigError
from rafs.oci import ImageReference, InvalidReference

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("127.0.0.1:5000/app", "127.0.0.1:5000", "app", "latest", ""),
        ("localhost/team/app:v1.2", "localhost", "team/app", "v1.2", ""),
        ("registry.example.com/a/b/c@" + DIGEST, "registry.example.com", "a/b/c", "latest", DIGEST),
        ("host.io:443/app:tag@" + DIGEST, "host.io:443", "app", "tag", DIGEST),
        ("[::1]:5000/app", "[::1]:5000", "app", "latest", ""),
        ("busybox", "docker.io", "library/busybox", "latest", ""),
        ("user/app:1", "docker.io", "user/app", "1", ""),
    ],
)
def test_reference_parse(text: str, registry: str, repository: str, tag: str, digest: str) -> None:
    ref = ImageReference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.reference == (digest or tag)
    assert ImageReference.parse(str(ref)) == ref


@pytest.mark.parametrize(
    "text", ["host.io/App", "host.io/app:", "host.io/app@sha256:abc", "host.io/app:bad/tag", "host.io/", "bad host/app"]
)
def test_reference_parse_refuses(text: str) -> None:
    with pytest.raises(InvalidReference):
        ImageReference.parse(text)


def test_challenges() -> None:
    bearer = parse_challenge('Bearer realm="http://127.0.0.1:1/token",service="reg",scope="repository:a:pull,push"')
    assert bearer is not None and bearer.scheme == "bearer"
    assert bearer.params == {"realm": "http://127.0.0.1:1/token", "service": "reg", "scope": "repository:a:pull,push"}
    basic = parse_challenge('Basic realm="test"')
    assert basic is not None and basic.scheme == "basic"
    assert parse_challenge("Negotiate abc") is None


def test_loopback() -> None:
    assert all(map(is_loopback, ["localhost", "127.0.0.1", "127.5.5.5", "::1"]))
    assert not any(map(is_loopback, ["10.0.0.1", "registry.example.com", "192.168.1.1"]))


def test_docker_config_logins(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    auth = base64.b64encode(b"bob:s3:cret").decode()
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "https://127.0.0.1:5000/v1/": {"auth": auth},
                    "localhost:6000": {"username": "carol", "password": "pw"},
                },
                "credsStore": "desktop",
            }
        )
    )
    assert docker_config_credentials(str(config), "127.0.0.1:5000") == ("bob", "s3:cret")
    assert docker_config_credentials(str(config), "localhost:6000") == ("carol", "pw")
    assert docker_config_credentials(str(config), "127.0.0.1:5001") is None
    assert docker_config_credentials(str(tmp_path / "missing.json"), "x") is None
    config.write_text("{not json")
    with pytest.raises(ConfigError, match="docker config"):
        docker_config_credentials(str(config), "x")
