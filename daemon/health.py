"""Runs the backend's health checks (mirrors, Dragonfly's proxy) as tasks of a mount's nursery.

Each check pings from a worker thread every `interval_s` while it is due (see
`daemon.storage.health`); the tasks end when the mount stops, so no ping outlives its mount
(a ping in flight is abandoned, bounded by its connect timeout, and fails harmlessly once the
backend's session is closed).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import trio

from daemon.storage.health import HealthCheck


async def run_health_checks(
    checks: Sequence[HealthCheck], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Keep every check going until cancelled."""
    async with trio.open_nursery() as nursery:
        for check in checks:
            nursery.start_soon(keep_checking, check)
        task_status.started()


async def keep_checking(check: HealthCheck) -> None:
    """Ping first (a proxy may be down from the start), then once per interval."""
    while True:
        if check.due():
            await trio.to_thread.run_sync(partial(check.check), abandon_on_cancel=True)
        await trio.sleep(check.interval_s)
