"""HTTP/1.1 over a unix socket, for the API (`--apisock`): framing only, no routes.

Just what nydus-snapshotter's Go client, curl and `nydusctl` send: a request line, headers, a
body of `Content-Length` bytes; keep-alive unless the client says `Connection: close`. Bodies
in chunked encoding are refused (501), as are oversized headers (431) and bodies (413): the API
has no large requests. Each connection is a task in the daemon's nursery, so a slow or idle
client never blocks FUSE requests, and every read waits at most `IDLE_TIMEOUT_S`.

The socket is made mode 0600 (the API can unmount and exit the daemon), replaces a stale
socket that a killed daemon left behind, refuses to take over one a live daemon still answers,
and is removed on exit by `remove_socket`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import trio

from daemon import unix_socket
from rafs.errors import ConfigError

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 << 10
MAX_BODY_BYTES = 4 << 20
IDLE_TIMEOUT_S = 60.0
REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


class ApiError(Exception):
    """A request the API answers with an error status and `{"code", "message"}`.

    An answer to a client, not a failure of the daemon: it never ends a process, so it is not
    in the error tree of exit codes (`rafs.errors`)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes

    def json(self) -> object:
        try:
            return json.loads(self.body or b"null")
        except ValueError as error:
            raise ApiError(400, "InvalidBody", f"request body is not JSON: {error}") from None


@dataclass
class Response:
    status: int = 200
    body: object = None  # JSON-encoded unless None
    after: Callable[[], None] | None = field(default=None, repr=False)  # run once the answer is sent

    def encode(self, keep_alive: bool) -> bytes:
        payload = b"" if self.body is None else json.dumps(self.body).encode()
        headers = [
            f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}",
            f"Content-Length: {len(payload)}",
        ]
        if payload:
            headers.append("Content-Type: application/json")
        if not keep_alive:
            headers.append("Connection: close")
        return ("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + payload


def error_response(error: ApiError) -> Response:
    return Response(error.status, {"code": error.code, "message": error.message})


Handler = Callable[[Request], Awaitable[Response]]


class _Connection:
    """Bytes of one client connection, split into requests."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def _fill(self) -> bool:
        with trio.fail_after(IDLE_TIMEOUT_S):
            data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def next_request(self) -> tuple[Request, bool] | None:
        """The next request and whether to keep the connection; None at a clean end."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_HEADER_BYTES:
                raise ApiError(431, "HeaderTooLarge", "request headers exceed 64 KiB")
            if not await self._fill():
                if self.buffer:
                    raise ApiError(400, "BadRequest", "connection closed mid-request")
                return None
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise ApiError(400, "BadRequest", f"malformed request line {lines[0][:100]!r}")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise ApiError(400, "BadRequest", f"malformed header line {line[:100]!r}")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise ApiError(501, "NotImplemented", "chunked request bodies are not supported; send Content-Length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise ApiError(400, "BadRequest", "Content-Length is not a number") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise ApiError(413, "BodyTooLarge", f"request body of {length} bytes (at most {MAX_BODY_BYTES})")
        while len(self.buffer) < length:
            if not await self._fill():
                raise ApiError(400, "BadRequest", "connection closed mid-body")
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        url = urlsplit(target)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        return Request(method.upper(), url.path, query, body), keep_alive


async def serve_connection(stream: trio.SocketStream, handler: Handler) -> None:
    """Answer requests on one connection until the client closes it or asks to."""
    connection = _Connection(stream)
    async with stream:
        while True:
            try:
                parsed = await connection.next_request()
            except ApiError as error:
                await stream.send_all(error_response(error).encode(keep_alive=False))
                return
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if parsed is None:
                return
            request, keep_alive = parsed
            try:
                response = await handler(request)
            except ApiError as error:
                response = error_response(error)
            except Exception as error:
                log.exception("api: %s %s failed", request.method, request.path)
                response = error_response(ApiError(500, "InternalError", f"{type(error).__name__}: {error}"))
            log.debug("api: %s %s -> %d", request.method, request.path, response.status)
            try:
                await stream.send_all(response.encode(keep_alive))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            finally:
                if response.after is not None:
                    response.after()
            if not keep_alive:
                return


def _live(path: str) -> bool:
    """Whether a daemon still answers on the unix socket at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


@dataclass
class ApiSocket:
    """The listening socket and the file it is bound to (removed on `close` if still ours)."""

    path: str
    listener: socket.socket
    file_ino: int

    @classmethod
    def bind(cls, path: str) -> ApiSocket:
        """Listen at `path`, mode 0600; a stale socket is replaced, a live one refused."""
        if unix_socket.too_long(path):
            raise ConfigError(
                f"--apisock {path}: longer than the {unix_socket.MAX_PATH_BYTES} bytes a unix socket path may have"
            )
        try:
            existing = os.lstat(path)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if not stat.S_ISSOCK(existing.st_mode):
                raise ConfigError(f"--apisock {path}: exists and is not a socket")
            if _live(path):
                raise ConfigError(f"--apisock {path}: another daemon is serving on it")
            log.info("api: replacing the stale socket %s", path)
            os.unlink(path)
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ConfigError(f"--apisock {path}: its directory does not exist")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # created 0600, never briefly wider
        try:
            listener.bind(path)
            os.chmod(path, 0o600)
            listener.listen(64)
            file_ino = os.stat(path).st_ino
        except OSError as error:
            listener.close()
            raise ConfigError(f"--apisock {path}: {error.strerror or error}") from None
        finally:
            os.umask(old_umask)
        return cls(path, listener, file_ino)

    def close(self) -> None:
        """Stop listening and remove the socket file, unless another daemon has replaced it."""
        try:
            if os.stat(self.path).st_ino == self.file_ino:
                os.unlink(self.path)
        except OSError as error:
            if error.errno != errno.ENOENT:
                log.warning("api: cannot remove %s: %s", self.path, error.strerror)
        self.listener.close()


async def serve_api(api_socket: ApiSocket, handler: Handler) -> None:
    """Accept connections until cancelled; each served in its own task."""
    trio_listener = trio.SocketListener(trio.socket.from_stdlib_socket(api_socket.listener))

    async def serve_one(stream: trio.SocketStream) -> None:
        await serve_connection(stream, handler)

    await trio.serve_listeners(serve_one, [trio_listener])
