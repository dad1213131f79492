"""Source trees and images for daemon tests: a synthetic tree with every kind of entry, and a
real Debian root from the installed `busybox-static` package (no network, no apt cache)."""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
from dataclasses import dataclass

from builder.build import BuildOptions, build
from builder.unpack import unpack_to_directory
from rafs import layout
from rafs.mapped import open_bootstrap

MTIME_NS = 1_700_000_000_123_456_789


@dataclass(frozen=True)
class Image:
    source: str
    bootstrap: str
    blob_dir: str


def build_image(
    source: str, output: str, *, chunk_size: int = 0x100000, compressor: int = layout.COMPRESSOR_ZSTD
) -> Image:
    bootstrap = os.path.join(output, "image.boot")
    blob_dir = os.path.join(output, "blobs")
    build("directory", [source], bootstrap, blob_dir, BuildOptions(chunk_size=chunk_size, compressor=compressor))
    return Image(source, bootstrap, blob_dir)


def unpack(image: Image, output: str) -> str:
    unpack_to_directory(open_bootstrap(image.bootstrap), image.blob_dir, output)
    return output


def _write(path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    with open(path, "wb") as file:
        file.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def synthetic_tree(root: str, *, seed: int = 7, files: int = 40) -> str:
    """Files of many sizes (empty, sub-chunk, multi-chunk, sparse zeros), hard links, symlinks,
    devices, a fifo, setuid/setgid/sticky bits, owners, xattrs, odd names, nested dirs."""
    rng = random.Random(seed)
    os.makedirs(root)
    os.makedirs(os.path.join(root, "usr/lib/deep/er/still"))
    os.makedirs(os.path.join(root, "etc"))
    os.makedirs(os.path.join(root, "root"), mode=0o700)
    os.makedirs(os.path.join(root, "tmp"))
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    for number in range(files):
        size = rng.choice([0, 1, 100, 4095, 4096, 65536, 65537, 200_000, 1 << 20, (1 << 20) + 3])
        data = rng.randbytes(size) if number % 3 else bytes(rng.choice([0, 7]) for _ in range(size))
        _write(os.path.join(root, "usr/lib", f"file{number:03}"), data, rng.choice([0o644, 0o755, 0o600, 0o444]))
    _write(os.path.join(root, "usr/lib/deep/er/still/zeros"), bytes(3 << 20))
    _write(os.path.join(root, "etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n")
    _write(os.path.join(root, "root/secret"), b"root only\n", 0o600)
    _write(os.path.join(root, "etc/owned"), b"owned by 1234:5678\n", 0o640, 1234, 5678)
    _write(os.path.join(root, "usr/lib/setuid"), b"#!/bin/sh\n", 0o4755)
    _write(os.path.join(root, "usr/lib/setgid"), b"#!/bin/sh\n", 0o2755)
    _write(os.path.join(root, "usr/lib/name with spaces \u00e9"), b"odd name\n")
    os.link(os.path.join(root, "usr/lib/file001"), os.path.join(root, "etc/hardlink-a"))
    os.link(os.path.join(root, "usr/lib/file001"), os.path.join(root, "usr/lib/deep/hardlink-b"))
    os.symlink("../usr/lib/file002", os.path.join(root, "etc/relative-link"))
    os.symlink("/usr/lib/file003", os.path.join(root, "etc/absolute-link"))
    os.symlink("does-not-exist", os.path.join(root, "etc/dangling"))
    os.symlink("usr/lib/deep", os.path.join(root, "dirlink"))
    os.mkfifo(os.path.join(root, "etc/fifo"))
    os.mknod(os.path.join(root, "etc/null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(os.path.join(root, "etc/block"), 0o660 | stat.S_IFBLK, os.makedev(8, 1))
    with_xattrs = os.path.join(root, "usr/lib/file004")
    os.setxattr(with_xattrs, "user.comment", b"hello")
    os.setxattr(with_xattrs, "user.empty", b"")
    os.setxattr(with_xattrs, "security.capability", bytes.fromhex("0100000200200000000000000000000000000000"))
    os.setxattr(os.path.join(root, "etc"), "user.dir", b"on a directory")
    for directory, subdirectories, names in os.walk(root, topdown=False):
        for name in subdirectories + names:
            os.utime(os.path.join(directory, name), ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)
    os.utime(root, ns=(MTIME_NS, MTIME_NS))
    return root


MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def _copy_installed(package: str, root: str) -> None:
    """The files of an installed Debian package, copied under `root` (as `make_example.py`
    takes busybox from the host): the package must be installed, as scripts/install.sh does."""
    listed = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, check=False)
    if listed.returncode != 0:
        raise RuntimeError(f"Debian package {package} is not installed (scripts/install.sh installs it)")
    for path in listed.stdout.splitlines():
        if not path.startswith("/") or path == "/.":
            continue
        # parents resolved (merged /usr), the last component kept (a package's own symlinks stay links)
        parent = os.path.realpath(os.path.dirname(path))
        target = os.path.join(root + parent, os.path.basename(path))
        if os.path.islink(path):
            os.makedirs(root + parent, exist_ok=True)
            if not os.path.lexists(target):
                os.symlink(os.readlink(path), target)
        elif os.path.isdir(path):
            os.makedirs(root + os.path.realpath(path), exist_ok=True)
        elif os.path.isfile(path):
            os.makedirs(root + parent, exist_ok=True)
            shutil.copy2(path, target)


def debian_root(root: str, packages: tuple[str, ...] = ("busybox-static",)) -> str:
    """A container root from installed Debian packages: each one's files, then busybox applet
    links, /etc/passwd with a non-root user, a root-only file and /etc/os-release."""
    os.makedirs(root)
    for name in MERGED_USR:  # the host's merged-/usr links, so that /bin/sh resolves as on the host
        if os.path.islink(f"/{name}"):
            os.symlink(os.readlink(f"/{name}"), os.path.join(root, name))
            os.makedirs(root + os.path.realpath(f"/{name}"), exist_ok=True)
    for package in packages:
        _copy_installed(package, root)
    busybox = os.path.join(root, "bin/busybox")
    if os.path.exists(busybox):
        applets = subprocess.run([busybox, "--list-full"], check=True, capture_output=True, text=True).stdout
        for applet in applets.split():
            link = os.path.join(root, applet)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            if not os.path.lexists(link):
                os.symlink("/bin/busybox", link)
    for directory in ("etc", "root", "tmp", "proc", "sys", "dev"):
        os.makedirs(os.path.join(root, directory), exist_ok=True)
    os.chmod(os.path.join(root, "root"), 0o700)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    _write(os.path.join(root, "etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n")
    _write(os.path.join(root, "etc/group"), b"root:x:0:\nuser:x:1000:\n")
    _write(os.path.join(root, "root/secret"), b"root only\n", 0o600)
    shutil.copyfile("/usr/lib/os-release", os.path.join(root, "etc/os-release"))
    return root
