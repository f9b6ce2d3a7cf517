"""Shutdown of the control plane's background loops. A cancel that lands inside a database
or Redis driver can come back out as an ordinary error (the driver tears its connection
down and raises its own exception), and a loop that retries on errors then absorbs it: a
single cancel is not enough, and the replica hung at shutdown (seen once in CI: the
lifespan waited 300 s for the metrics loop)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from x0tta6bl4.control.bus import LocalBus
from x0tta6bl4.control.push import Pusher
from x0tta6bl4.control.tasks import stop_task


class _Result:
    def scalar(self) -> int:
        return 1


class _Session:
    """Answers at once until ``slow`` is set; then a query hangs, and a cancel comes
    out as a driver error, as asyncpg's can."""

    def __init__(self, db: _DriverLikeDb) -> None:
        self.db = db

    async def execute(self, _stmt: Any) -> _Result:
        if self.db.slow:
            self.db.in_query.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                if self.db.converted:
                    raise
                self.db.converted = True  # the rare case, once
                raise RuntimeError("connection was closed in the middle of operation") from None
        return _Result()


class _DriverLikeDb:
    def __init__(self) -> None:
        self.slow = False
        self.converted = False
        self.in_query = asyncio.Event()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[_Session]:
        yield _Session(self)


def test_the_pusher_stops_even_when_its_driver_swallows_the_cancel() -> None:
    async def main() -> float:
        db = _DriverLikeDb()
        pusher = Pusher(db, LocalBus(), poll_s=0.01)
        await pusher.start()
        db.slow = True
        await asyncio.wait_for(db.in_query.wait(), 5.0)  # a poll is inside the driver
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            await asyncio.wait_for(pusher.close(), 5.0)
            return loop.time() - t0
        finally:
            task = pusher._task  # whatever happened, leave no task behind
            if task is not None and not task.done():
                db.slow = False
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)

    assert asyncio.run(main()) < 1.0


def test_stop_task_cancels_again_until_the_task_ends() -> None:
    swallowed = 0

    async def absorbs_two_cancels() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                if swallowed < 2:
                    swallowed += 1
                    continue
                raise

    async def main() -> asyncio.Task[None]:
        task = asyncio.create_task(absorbs_two_cancels())
        await asyncio.sleep(0)
        await asyncio.wait_for(stop_task(task), 5.0)
        return task

    task = asyncio.run(main())
    assert task.cancelled() and swallowed == 2


def test_stop_task_gives_up_after_its_timeout_and_says_so() -> None:
    stop = False

    async def ignores_cancels() -> None:
        while not stop:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(60)

    async def main() -> tuple[bool, bool]:
        nonlocal stop
        task = asyncio.create_task(ignores_cancels())
        await asyncio.sleep(0)
        stopped = await stop_task(task, timeout=0.3)
        done = task.done()
        stop = True  # the test's own clean-up
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
        return stopped, done

    stopped, done = asyncio.run(main())
    assert stopped is False and done is False


def test_stop_task_of_nothing_or_a_finished_task_is_a_no_op() -> None:
    async def main() -> tuple[bool, bool]:
        done = asyncio.create_task(asyncio.sleep(0))
        await done
        return await stop_task(None), await stop_task(done)

    assert asyncio.run(main()) == (True, True)
