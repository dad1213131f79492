"""Registry authentication: `WWW-Authenticate` challenges, docker config logins, bearer tokens.

Anonymous first; once a host has challenged us, every request to it carries what the challenge
asked for: Basic with the configured or `~/.docker/config.json` credentials, or a Bearer token
from the realm (or nydusd's `registry_token` as is), cached per scope until shortly before it
expires. A refused login is an `RegistryAuthError` at once, never retried.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from daemon.storage.options import RegistryOptions
from daemon.storage.registry.errors import RegistryAuthError
from daemon.storage.transport import HttpTransport
from rafs import oci
from rafs.errors import ConfigError

DOCKER_HUB_HOST = "registry-1.docker.io"
TOKEN_MARGIN_S = 10.0
DEFAULT_TOKEN_LIFETIME_S = 60.0


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer", lowercased
    params: Mapping[str, str]


_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"|([A-Za-z_]+)=([^\s,]+)')


def parse_challenge(header: str) -> Challenge | None:
    """`Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`; None if neither."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() not in ("basic", "bearer"):
        return None
    params = {}
    for match in _CHALLENGE_PARAM.finditer(rest):
        key = match.group(1) or match.group(3)
        params[key.lower()] = match.group(2) if match.group(1) else match.group(4)
    return Challenge(scheme.lower(), params)


def docker_config_credentials(path: str, registry: str) -> tuple[str, str] | None:
    """(username, password) for `registry` from a docker `config.json` `auths` entry, if any.

    Keys may be `host`, `https://host` or `https://host/v1/`; credential helpers (`credsStore`)
    are not run: only inline `auth` or `username`/`password` entries are read.
    """
    try:
        with open(path, "rb") as file:
            config = json.load(file)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ConfigError(f"docker config {path}: {error}") from None
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return None
    aliases = {registry}
    if registry in (oci.DOCKER_HUB, DOCKER_HUB_HOST):
        aliases |= {oci.DOCKER_HUB, DOCKER_HUB_HOST, "index.docker.io"}
    for key, entry in auths.items():
        host = urlsplit(key).netloc if "://" in key else key.split("/", 1)[0]
        if host not in aliases or not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except ValueError:
                raise ConfigError(f"docker config {path}: auths.{key}.auth is not base64 of user:password") from None
            return username, password
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return entry["username"], entry["password"]
    return None


def with_query(url: str, **params: str) -> str:
    """`url` with `params` appended to its query string."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


class Authenticator:
    """What to send to each host, learnt from its challenges. Thread-safe."""

    def __init__(self, options: RegistryOptions, transport: HttpTransport) -> None:
        self.options = options
        self.transport = transport
        self._lock = threading.Lock()
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._docker_logins: dict[str, tuple[str, str] | None] = {}

    def remember(self, host: str, challenge: Challenge) -> Challenge | None:
        """Keep `challenge` as `host`'s; returns the one it had before (None if none)."""
        with self._lock:
            known = self._challenges.get(host)
            self._challenges[host] = challenge
        return known

    def _credentials(self, host: str) -> tuple[str, str] | None:
        """The configured login, else the docker config's for `host` (read once per host)."""
        if self.options.username:
            return self.options.username, self.options.password
        if host not in self._docker_logins:
            path = self.options.docker_config
            if path is None:
                directory = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
                path = os.path.join(directory, "config.json")
            self._docker_logins[host] = docker_config_credentials(path, host) if path else None
        return self._docker_logins[host]

    def header(self, host: str, repo: str, actions: str, *, fresh: bool) -> dict[str, str]:
        """What to send for `host`: nothing until it has challenged us, then what it asked for."""
        with self._lock:
            challenge = self._challenges.get(host)
            if challenge is None:
                return {}
            if challenge.scheme == "basic":
                credentials = self._credentials(host)
                if credentials is None:
                    raise RegistryAuthError(
                        f"registry {host} asks for a login and none is configured", url=host, repo=repo
                    )
                token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
                return {"Authorization": f"Basic {token}"}
            if self.options.registry_token:
                return {"Authorization": f"Bearer {self.options.registry_token}"}
            return {"Authorization": f"Bearer {self._bearer_token(host, challenge, repo, actions, fresh=fresh)}"}

    def _bearer_token(self, host: str, challenge: Challenge, repo: str, actions: str, *, fresh: bool) -> str:
        """A token for `repository:repo:actions` from the challenge's realm, cached until it expires."""
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise RegistryAuthError(
                f"registry {host} sent a Bearer challenge without a usable realm {realm!r}", repo=repo
            )
        service = challenge.params.get("service", "")
        scope = f"repository:{repo}:{actions}"
        key = (realm, service, scope)
        cached = self._tokens.get(key)
        if cached is not None and not fresh and time.monotonic() < cached[1]:
            return cached[0]
        params = {"scope": scope}
        if service:
            params["service"] = service
        headers = {}
        credentials = self._credentials(host)
        if credentials is not None:
            params["account"] = credentials[0]
            basic = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        response = self.transport.request("GET", with_query(realm, **params), headers=headers)
        if response.status_code in (401, 403):
            who = f"user {credentials[0]!r}" if credentials else "anonymous access"
            raise RegistryAuthError(f"token server refused {who}: HTTP {response.status_code}", url=realm, repo=repo)
        if response.status_code != 200:
            raise RegistryAuthError(f"token server answered HTTP {response.status_code}", url=realm, repo=repo)
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
            lifetime_s = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME_S)
        except (ValueError, AttributeError, TypeError):
            token, lifetime_s = None, 0.0
        if not isinstance(token, str) or not token:
            raise RegistryAuthError("token server sent no token", url=realm, repo=repo)
        margin_s = min(TOKEN_MARGIN_S, lifetime_s / 2)  # renew early, but keep short-lived tokens useful
        self._tokens[key] = (token, time.monotonic() + lifetime_s - margin_s)
        return token
