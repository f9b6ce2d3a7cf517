"""Stopping the control plane's background loops.

A cancel that lands inside a database or Redis driver can come back out as the driver's
own error (it tears the connection down and raises, say, "connection was closed in the
middle of operation"), and a loop that retries on errors absorbs it and carries on. One
``task.cancel()`` followed by ``await task`` then waits forever, and a replica hangs at
shutdown. :func:`stop_task` cancels again until the task has ended, within a bound.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import structlog

log = structlog.get_logger("x0tta6bl4.control")

STOP_TIMEOUT: Final = 5.0
_RECANCEL_EVERY: Final = 0.05


async def stop_task(task: asyncio.Task[Any] | None, timeout: float = STOP_TIMEOUT) -> bool:
    """Cancel ``task``, repeating the cancel until it ends, for at most ``timeout``
    seconds. True once it has ended (or if there was none); False, with a warning, if it
    is still running then. What the task raised on its way out is dropped: the loops log
    their own errors."""
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            log.warning("task_did_not_stop", task=task.get_name(), timeout_s=timeout)
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(_RECANCEL_EVERY, left))
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not report it as never retrieved
    return True
