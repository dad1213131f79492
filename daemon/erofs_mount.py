"""mount(2) and umount2(2) of an EROFS image file, file-backed (Linux 6.12 and later).

`mount(8)` would put the file on a loop device, and then its `device=` must be a block device
too; a file-backed mount takes the image and its extra device as plain files, such as one that
nydusd serves over FUSE.
"""

from __future__ import annotations

import ctypes
import os

from rafs.errors import MountError

MS_RDONLY = 1
MNT_DETACH = 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mount_erofs(image: str, target: str, device: str | None = None) -> None:
    """Mount the EROFS image file `image` read-only at `target` (its extra device: `device`)."""
    options = f"device={device}".encode() if device is not None else b""
    if _libc().mount(os.fsencode(image), os.fsencode(target), b"erofs", MS_RDONLY, options) != 0:
        error = ctypes.get_errno()
        shown = f" (device={device})" if device is not None else ""
        raise MountError(f"mount -t erofs {image}{shown} on {target}: {os.strerror(error)}")


def unmount(target: str, *, lazy: bool = False) -> None:
    """Unmount `target` (with `lazy`, detach it now and let the kernel finish when unused)."""
    if _libc().umount2(os.fsencode(target), MNT_DETACH if lazy else 0) != 0:
        raise MountError(f"umount {target}: {os.strerror(ctypes.get_errno())}")
