"""Pytest fixtures for a real registry on loopback (`benchmarks.registry_server` starts it).

Three flavours: anonymous (`registry`), htpasswd Basic auth (`basic_registry`) and token auth
(`token_registry`) with a small token server of our own that signs RS256 JWTs with a key made for
the test. Every fixture stops what it starts; nothing listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from benchmarks.registry_server import RunningRegistry, free_port, start_registry

__all__ = ["RunningRegistry", "TokenRegistry", "free_port", "start_registry"]

USERNAME = "alice"
PASSWORD = "wonderland"
SERVICE = "test-registry"
ISSUER = "test-token-issuer"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    """An anonymous registry: anyone may pull and push."""
    running = start_registry(tmp_path / "registry")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def basic_registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    """A registry behind htpasswd (bcrypt) Basic auth for `USERNAME`/`PASSWORD`."""
    if not shutil.which("htpasswd"):
        pytest.skip("htpasswd is not installed (apt-get install apache2-utils)")
    root = tmp_path / "registry"
    root.mkdir()
    entry = subprocess.run(["htpasswd", "-Bbn", USERNAME, PASSWORD], check=True, capture_output=True, text=True)
    htpasswd = root / "htpasswd"
    htpasswd.write_text(entry.stdout.strip() + "\n")
    running = start_registry(root, {"htpasswd": {"realm": "test-realm", "path": str(htpasswd)}})
    running.username, running.password = USERNAME, PASSWORD
    try:
        yield running
    finally:
        running.stop()


def self_signed_certificate(directory: Path, common_name: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate (and key) valid for 127.0.0.1, written as PEM; returns (certificate, key)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    certificate_path, key_path = directory / "tls.crt", directory / "tls.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate_path, key_path


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    """A registry serving HTTPS with a self-signed certificate for 127.0.0.1."""
    pytest.importorskip("cryptography")
    root = tmp_path / "registry"
    root.mkdir()
    certificate, key = self_signed_certificate(root)
    running = start_registry(root, tls={"certificate": str(certificate), "key": str(key)})
    try:
        yield running
    finally:
        running.stop()


# ---- token auth


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """Issues registry tokens (RS256 JWT with the signing certificate in `x5c`).

    `USERNAME` with `PASSWORD` gets every action asked for; anonymous callers get a token that
    grants nothing (as public token servers do); a wrong password gets 401. `requests` counts
    token requests so tests can see the cache at work; `lifetime_s` is each token's lifetime.
    """

    root: Path
    lifetime_s: int = 300
    requests: list[dict[str, str]] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.certificate_der = certificate.public_bytes(serialization.Encoding.DER)
        self.bundle_path = self.root / "token-ca.pem"
        self.bundle_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def sign(self, subject: str, access: list[dict[str, object]]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.certificate_der).decode()]}
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + self.lifetime_s,
            "nbf": now - 5,
            "iat": now,
            "jti": f"{subject}-{now}-{len(self.requests)}",
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = {key: values[0] for key, values in parse_qs(urlsplit(self.path).query).items()}
                server.requests.append(query)
                subject = "anonymous"
                authorization = self.headers.get("Authorization", "")
                if authorization.startswith("Basic "):
                    user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
                    if (user, password) != (USERNAME, PASSWORD):
                        self._answer(401, {"details": "wrong credentials"})
                        return
                    subject = user
                access: list[dict[str, object]] = []
                scope = query.get("scope", "")
                if subject != "anonymous" and scope.startswith("repository:"):
                    _, name, actions = scope.split(":", 2)
                    access.append({"type": "repository", "name": name, "actions": actions.split(",")})
                token = server.sign(subject, access)
                self._answer(200, {"token": token, "access_token": token, "expires_in": server.lifetime_s})

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@dataclass
class TokenRegistry(RunningRegistry):
    """A running registry that trusts `token_server`'s tokens only."""

    token_server: TokenServer | None = None


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[TokenRegistry]:
    """A registry that accepts only tokens from our `TokenServer` (`running.token_server`)."""
    pytest.importorskip("cryptography")
    root = tmp_path / "registry"
    root.mkdir()
    tokens = TokenServer(root)
    try:
        auth: dict[str, object] = {
            "token": {
                "realm": tokens.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(tokens.bundle_path),
            }
        }
        started = start_registry(root, auth)
        running = TokenRegistry(**{**vars(started), "username": USERNAME, "password": PASSWORD}, token_server=tokens)
        try:
            yield running
        finally:
            running.stop()
    finally:
        tokens.stop()
