"""A real registry on loopback: Debian's `docker-registry` (distribution v2.8), started and stopped.

Used by the cold-start benchmark and wrapped by the tests' fixtures (`tests/registry_fixture.py`),
so neither imports the other's helpers. Nothing listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import requests

REGISTRY_BINARY = "/usr/bin/docker-registry"


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the registry binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RunningRegistry:
    """A registry process on `host` (`127.0.0.1:port`), with its storage under `root`."""

    host: str
    root: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    username: str = ""
    password: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _write_config(
    root: Path, port: int, auth: dict[str, object] | None, tls: dict[str, str] | None, remote_url: str = ""
) -> Path:
    """The registry's YAML config. JSON is valid YAML, so it is written with `json`.

    `remote_url` makes it a pull-through cache of that registry (`proxy: remoteurl:`).
    """
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root / "storage")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "test-secret"},
    }
    if auth:
        config["auth"] = auth
    if tls:
        config["http"]["tls"] = tls  # type: ignore[index]
    if remote_url:
        config["proxy"] = {"remoteurl": remote_url}
    path = root / "config.yml"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_registry(
    root: Path, auth: dict[str, object] | None = None, tls: dict[str, str] | None = None, remote_url: str = ""
) -> RunningRegistry:
    """Start `docker-registry` on a free loopback port and wait until `/v2/` answers."""
    if not shutil.which(REGISTRY_BINARY):
        raise RuntimeError(f"{REGISTRY_BINARY} is not installed (scripts/install.sh installs docker-registry)")
    root.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _ in range(3):  # a port taken between probing and binding: try another
        port = free_port()
        config = _write_config(root, port, auth, tls, remote_url)
        log_path = root / f"registry-{port}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config)], stdout=log_file, stderr=subprocess.STDOUT
            )
        running = RunningRegistry(f"127.0.0.1:{port}", root, process, log_path)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the probe does not verify the test certificate
                    answer = requests.get(f"{'https' if tls else 'http'}://{running.host}/v2/", timeout=1, verify=False)
                if answer.status_code in (200, 401):
                    return running
            except requests.ConnectionError:  # includes TLS errors while it starts
                time.sleep(0.05)
        last_error = running.log()
        running.stop()
    raise RuntimeError(f"docker-registry did not start:\n{last_error}")
