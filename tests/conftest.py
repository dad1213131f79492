"""Shared pytest setup: hypothesis profiles and small generic helpers.

Profiles: "default" (quick, for every run), "ci" (more examples), selected with
`HYPOTHESIS_PROFILE=ci`. No deadlines: the machine is shared and timing is not under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def run_console(script: str, arguments: Sequence[str], *, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run an installed console script (e.g. `nydus-image`) and capture its output as text."""
    executable = shutil.which(script)
    if executable is None:
        pytest.skip(f"console script {script!r} is not installed (pip install -e .)")
    completed = subprocess.run([executable, *arguments], capture_output=True, text=True, timeout=600)
    if check and completed.returncode != 0:
        raise AssertionError(f"{script} {' '.join(arguments)} failed ({completed.returncode}): {completed.stderr}")
    return completed


@pytest.fixture
def cli() -> object:
    """`cli("nydus-image", [...])` runs a console script; see `run_console`."""
    return run_console
