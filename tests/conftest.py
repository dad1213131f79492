"""Shared pytest setup: hypothesis profiles, the log check, and small generic helpers.

Profiles: "default" (quick, for every run), "ci" (more examples), selected with
`HYPOTHESIS_PROFILE=ci`. No deadlines: the machine is shared and timing is not under test.

A test during which the project's code logs a WARNING or worse fails, unless it is marked
`@pytest.mark.logs_warnings` (it provokes them on purpose): a warning nobody asked for is a
bug report nobody reads.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence

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


PROJECT_LOGGERS = ("rafs", "native", "builder", "daemon", "benchmarks")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "logs_warnings: the test makes the code log warnings on purpose")


@pytest.fixture(autouse=True)
def _no_unexpected_warnings(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    if request.node.get_closest_marker("logs_warnings") is not None:
        return
    unexpected = [
        f"{record.levelname} {record.name}: {record.getMessage()}"
        for when in ("setup", "call")
        for record in caplog.get_records(when)
        if record.levelno >= logging.WARNING and record.name.split(".")[0] in PROJECT_LOGGERS
    ]
    if unexpected:
        pytest.fail("the code logged unexpected warnings:\n" + "\n".join(unexpected[:10]), pytrace=False)
