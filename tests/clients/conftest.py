"""A scripted fake iopfd for the client library's unit tests.

It speaks real frames on a real Unix socket, so the library is exercised end to
end through its reader and writer tasks, but every reply and event is chosen by
the test: handlers return a result map, raise ``FakeErr`` for an error reply, or
return ``DEFER`` and reply later with ``conn.reply``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio

from clients.pytest_plugin import IopfdDaemon, report_log_of
from iopfd.protocol.frames import FrameDecoder, encode_frame

DEFER = object()


class FakeErr(Exception):
    def __init__(self, code: str, message: str = "") -> None:
        self.code = code
        self.message = message


Handler = Callable[["FakeConn", dict[str, Any]], Awaitable[Any]]


class FakeConn:
    def __init__(self, daemon: FakeDaemon, stream: trio.SocketStream) -> None:
        self.daemon = daemon
        self.stream = stream
        self.requests: list[dict[str, Any]] = []
        self.seq = 0
        self.chunks = 0
        self._lock = trio.Lock()

    async def send(self, msg: dict[str, Any]) -> None:
        async with self._lock:
            await self.stream.send_all(encode_frame(msg))

    async def reply(self, req: dict[str, Any], result: dict[str, Any] | None = None) -> None:
        await self.send({"id": req["id"], "ok": True, "result": result or {}})

    async def error(self, req: dict[str, Any], code: str, message: str = "") -> None:
        await self.send({"id": req["id"], "ok": False, "error": {"code": code, "message": message}})

    async def event(self, kind: str, seq: int | None = None, **fields: Any) -> None:
        self.seq = self.seq + 1 if seq is None else seq
        await self.send({"event": kind, "seq": self.seq, **fields})

    async def fault(self, fault_id: int, cookie: int, addrs: list[int], **extra: Any) -> None:
        faults = [
            {
                "flags": 2 if i == len(addrs) - 1 else 0,
                "dev_id": 1,
                "pasid": 0,
                "grpid": 3,
                "perm": 3,
                "addr": a,
                "length": 0,
            }
            for i, a in enumerate(addrs)
        ]
        await self.event("fault", fault_id=fault_id, cookie=cookie, faults=faults, **extra)

    def ops(self) -> list[str]:
        return [r["op"] for r in self.requests]


class FakeDaemon:
    def __init__(self, path: str) -> None:
        self.path = path
        self.handlers: dict[str, Handler] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.conns: list[FakeConn] = []
        self.connected = trio.Event()

    def on(self, op: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.handlers[op] = fn
            return fn

        return deco

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(self.path)
        sock.listen()
        listener = trio.SocketListener(sock)
        task_status.started()
        await trio.serve_listeners(self._handle, [listener])

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = FakeConn(self, stream)
        self.conns.append(conn)
        self.connected.set()
        dec = FrameDecoder()
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.ClosedResourceError:
                    return
                if not data:
                    return
                conn.chunks += 1
                for msg in dec.feed(data):
                    conn.requests.append(msg)
                    nursery.start_soon(self._run, conn, msg)

    async def _run(self, conn: FakeConn, msg: dict[str, Any]) -> None:
        op = msg["op"]
        try:
            if op in self.handlers:
                result = await self.handlers[op](conn, msg)
            elif op == "hello":
                result = {
                    "version": 2,
                    "server": "fake/0",
                    "max_frame": 1 << 20,
                    "admin": True,
                    "kernel": "6.18",
                }
            elif op == "ioas_map" and op not in self.results:
                # As the daemon: the IOVA mapped, the one asked for or one it picked.
                result = {"iova": msg.get("iova", 0x10_0000)}
            else:
                result = self.results.get(op, {})
        except FakeErr as e:
            await conn.error(msg, e.code, e.message)
            return
        if result is not DEFER:
            await conn.reply(msg, result)


@pytest.fixture
async def fake(nursery: trio.Nursery) -> AsyncIterator[FakeDaemon]:
    with tempfile.TemporaryDirectory(prefix="iopf-fake-") as d:
        daemon = FakeDaemon(os.path.join(d, "fake.sock"))
        await nursery.start(daemon.serve)
        yield daemon


# -- the real daemon, as a subprocess: the users' pytest plugin (clients.pytest_plugin) ----


class LiveDaemon:
    """A real iopfd started by the plugin's :class:`IopfdDaemon` (``clients.launch``,
    ready on READY=1); ``config`` is TOML text, written to ``tmpdir``."""

    def __init__(self, tmpdir: str, config: str | None = None) -> None:
        self.dir = tmpdir
        cfg = None
        if config is not None:
            cfg = os.path.join(tmpdir, "iopfd.toml")
            with open(cfg, "w") as f:
                f.write(config)
        self.daemon = IopfdDaemon(config=cfg)
        self.path = self.daemon.socket
        self.log_path = str(self.daemon.log_path)
        self.launched = self.daemon.launched

    def stop(self) -> int:
        return self.daemon.stop(10.0)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveDaemon]:
    """One real iopfd per test module (default topology). At the end the exactly-once
    identity must hold; then SIGTERM, exit 0 and no socket left (IopfdDaemon.finish)."""
    with tempfile.TemporaryDirectory(prefix="iopfd-it-") as d:
        daemon = LiveDaemon(d)
        yield daemon
        daemon.daemon.finish()


@pytest.fixture(autouse=True)
def _live_log_on_failure(request: pytest.FixtureRequest) -> None:
    """A failing test that used the module's daemon shows its log (as the plugin's own
    fixtures do)."""
    if "live" in request.fixturenames:
        report_log_of(request.node, request.getfixturevalue("live").daemon)
