"""The daemon's version, as `nydusd --version` prints it and `GET /api/v1/daemon` reports it.

Worked out on first use only (package metadata, one `git` call for a source checkout): a
mount that nobody asks never pays for it.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess

PACKAGE = "nydus-py"
SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "0.0.0+unknown"


@functools.cache
def git_commit() -> str:
    """The source checkout's commit, or "" when not run from one."""
    if not os.path.exists(os.path.join(SOURCE_DIR, ".git")):
        return ""
    try:
        done = subprocess.run(
            ["git", "-C", SOURCE_DIR, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def version_info() -> dict[str, str]:
    """Nydus's `BuildTimeInfo` fields (`rustc` becomes `python`: what this daemon runs on)."""
    return {
        "package_ver": package_version(),
        "git_commit": git_commit(),
        "build_time": "",
        "profile": "release",
        "python": platform.python_version(),
    }


def version_line() -> str:
    commit = git_commit()
    return f"nydusd {package_version()}" + (f" ({commit[:12]})" if commit else "")
