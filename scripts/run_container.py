#!/usr/bin/env python3
"""Run a command in a container whose root is a nydusd mount, as a container runtime would.

    scripts/run_container.py (--bootstrap IMAGE.boot | --image REF [--plain-http]) [--config nydusd.json] \
        --workdir DIR [--user UID:GID] [--keep] -- /bin/sh -c 'cat /etc/os-release'

Steps: `nydusd` mounts the image read-only at DIR/lower; an overlay of it with a writable
DIR/upper becomes the bundle's rootfs; `runc spec` writes the OCI config, which gets the
command, the user and the hostname; `runc run` runs it in the foreground. Everything is torn
down afterwards (container, overlay, daemon), also on failure. Exits with the container's
exit status. Needs root, runc and overlayfs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nydusd_command() -> list[str]:
    installed = shutil.which("nydusd")
    return [installed] if installed else [sys.executable, "-m", "daemon.cli"]


def wait_for_mount(path: str, daemon: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"run_container: nydusd exited with {daemon.returncode}")
        if os.path.ismount(path):
            try:
                os.statvfs(path)
                return
            except OSError:
                pass
        time.sleep(0.02)
    raise SystemExit("run_container: nydusd did not mount in time")


def write_spec(bundle: str, command: list[str], uid: int, gid: int, hostname: str) -> None:
    path = os.path.join(bundle, "config.json")
    if os.path.exists(path):
        os.unlink(path)
    subprocess.run(["runc", "spec", "--bundle", bundle], check=True)
    with open(path, encoding="utf-8") as file:
        spec = json.load(file)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = command
    spec["process"]["user"] = {"uid": uid, "gid": gid}
    spec["process"]["cwd"] = "/"
    spec["root"] = {"path": "rootfs", "readonly": False}
    spec["hostname"] = hostname
    with open(path, "w", encoding="utf-8") as file:
        json.dump(spec, file, indent=2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bootstrap")
    source.add_argument("--image", help="a converted image in a registry (nydusd --image)")
    parser.add_argument("--plain-http", action="store_true", help="with --image: plain HTTP to the registry")
    parser.add_argument("--config", help="nydusd JSON config (required with --bootstrap)")
    parser.add_argument("--workdir", required=True, help="holds the mounts, upper layer and bundle")
    parser.add_argument("--user", default="0:0", help="UID:GID of the container's process")
    parser.add_argument("--keep", action="store_true", help="keep the upper layer afterwards")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    uid, gid = (int(part) for part in args.user.split(":"))
    if args.image:
        image_source = ["--image", args.image, *(["--plain-http"] if args.plain_http else [])]
    elif args.config:
        image_source = ["--bootstrap", args.bootstrap]
    else:
        parser.error("--bootstrap needs --config")
    config = ["--config", args.config] if args.config else []
    work = os.path.abspath(args.workdir)
    lower, upper, overlay_work = (os.path.join(work, name) for name in ("lower", "upper", "overlay-work"))
    bundle = os.path.join(work, "bundle")
    rootfs = os.path.join(bundle, "rootfs")
    for directory in (lower, upper, overlay_work, rootfs):
        os.makedirs(directory, exist_ok=True)
    container_id = f"nydus-{uuid.uuid4().hex[:12]}"
    log = open(os.path.join(work, "nydusd.log"), "ab")  # noqa: SIM115 (lives as long as the daemon)
    daemon = subprocess.Popen(
        [*nydusd_command(), *image_source, "--mountpoint", lower, *config],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    overlay_mounted = False
    try:
        wait_for_mount(lower, daemon)
        subprocess.run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={lower},upperdir={upper},workdir={overlay_work}",
                rootfs,
            ],
            check=True,
        )
        overlay_mounted = True
        write_spec(bundle, args.command, uid, gid, "nydus")
        return subprocess.run(["runc", "run", "--bundle", bundle, container_id], check=False).returncode
    finally:
        subprocess.run(["runc", "delete", "--force", container_id], check=False, capture_output=True)
        if overlay_mounted:
            subprocess.run(["umount", rootfs], check=False)
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
            subprocess.run(["umount", "-l", lower], check=False, capture_output=True)
        log.close()
        if not args.keep:
            shutil.rmtree(upper, ignore_errors=True)
            shutil.rmtree(overlay_work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
