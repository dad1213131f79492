"""The one limit of unix socket paths, checked by the API socket and the snapshotter alike."""

from __future__ import annotations

import os

MAX_PATH_BYTES = 107  # sun_path is 108 bytes with its terminating NUL


def too_long(path: str) -> bool:
    """Whether `path` cannot be bound or connected to as a unix socket (binding would fail with
    an error that names neither the path nor the limit)."""
    return len(os.fsencode(path)) > MAX_PATH_BYTES
