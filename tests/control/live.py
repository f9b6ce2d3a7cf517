"""A real control plane on a free 127.0.0.1 port, for tests that need real HTTP: the
node's ``ControlClient`` speaks ``http.client`` and cannot reach the in-process
TestClient.

    with running_control_plane(settings) as live:
        live.url                    # "http://127.0.0.1:PORT"
        live.auth()                 # admin headers (live.new_key("operator") for others)
        live.create_token(tags=[...])["token"]
        live.call(async_fn, *args)  # run a coroutine on the server's own loop
        live.ctx                    # its ControlContext (db, ca, pusher, ...)

or the fixtures ``live_control`` (SQLite in tmp_path) and ``live_control_any``
(parametrised: SQLite, and PostgreSQL + Redis when this machine has them; import it with
the ``pg_database`` and ``redis_url`` fixtures of ``tests/control/conftest.py``, or use it
from tests/control). uvicorn runs in a thread on its own event loop; the server is shut
down and the thread joined however the test ends, and a server that fails to start
raises at once instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

T = TypeVar("T")

STARTUP_TIMEOUT_S = 30.0


class LiveControl:
    def __init__(self, settings: Any, app: Any, loop: asyncio.AbstractEventLoop, port: int):
        self.settings = settings
        self.app = app
        self.loop = loop
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ctx = app.state.ctl
        self.http = httpx.Client(base_url=self.url, timeout=30.0)
        self.admin_key = self.new_key("admin")

    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, timeout: float = 30) -> T:
        """Run ``fn(*args)`` on the server's event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(fn(*args), self.loop).result(timeout)

    def new_key(self, role: str, name: str | None = None) -> str:
        from x0tta6bl4.control.admin import create_api_key
        from x0tta6bl4.control.auth import Role

        return self.call(create_api_key, self.ctx.db, name or f"live-{role}", Role[role], "test")

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    def create_token(self, **body: Any) -> dict[str, Any]:
        r = self.http.post("/v1/tokens", json=body, headers=self.auth())
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.http.close()


@contextlib.contextmanager
def running_control_plane(settings: Any) -> Iterator[LiveControl]:
    """The app of ``settings`` served by uvicorn on 127.0.0.1:<free port>."""
    import uvicorn

    from x0tta6bl4.control.app import create_app

    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    )
    box: dict[str, Any] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        except BaseException as exc:  # reported to the test below
            box["error"] = exc
        finally:
            loop.close()

    thread = threading.Thread(target=serve, name=f"live-control-{port}", daemon=True)
    thread.start()
    live: LiveControl | None = None
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(
                    f"the control plane did not start: {box.get('error')!r} (see the log)"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"the control plane did not start in {STARTUP_TIMEOUT_S} s")
            time.sleep(0.02)
        live = LiveControl(settings, app, box["loop"], port)
        yield live
    finally:
        if live is not None:
            live.close()
        server.should_exit = True
        thread.join(15)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)
        sock.close()


@pytest.fixture
def live_control(tmp_path: Path) -> Iterator[LiveControl]:
    """A live control plane on SQLite in tmp_path."""
    from x0tta6bl4.control.settings import ControlSettings

    with running_control_plane(ControlSettings(data_dir=tmp_path / "control")) as live:
        yield live


@pytest.fixture
def live_control_any(control_settings: Any) -> Iterator[LiveControl]:
    """A live control plane on each database of ``control_settings`` (tests/control)."""
    with running_control_plane(control_settings) as live:
        yield live
