"""Fair, bounded work in-process: one connection's burst of requests, or its teardown
with hundreds of attachments, lets the other connections be served in between."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest
import trio
import trio.testing
from iopfd_flows import ACCEL0
from iopfd_inprocess import NOBODY, ROOT, connect, identity_holds, running, socket_pair

from iopfd.server import connection as server_connection
from iopfd.server import ops as server_ops
from iopfd.server.connection import REQUESTS_PER_SLICE

BURST = 30 * REQUESTS_PER_SLICE


async def test_a_burst_in_one_read_does_not_hold_other_connections_until_its_end(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    real_devices = server_ops.HANDLERS["devices"]
    real_status = server_ops.HANDLERS["status"]

    def devices(*args: Any) -> Any:
        order.append("devices")
        return real_devices(*args)

    def status(*args: Any) -> Any:
        order.append("status")
        return real_status(*args)

    monkeypatch.setitem(server_ops.HANDLERS, "devices", devices)
    monkeypatch.setitem(server_ops.HANDLERS, "status", status)
    async with running() as daemon:
        tenant = await connect(daemon, NOBODY)
        admin = await connect(daemon, ROOT)
        order.clear()
        await tenant.send(*(tenant.frame("devices")[1] for _ in range(BURST)))
        with trio.fail_after(60):
            while not order:
                await trio.sleep(0)
        assert (await admin.call("status"))["clients"] == 2
        # Served in the middle of the burst, not after its last request.
        assert 0 < order.index("status") < BURST
        for rid in range(2, 2 + BURST):
            assert (await tenant.reply(rid)).ok


def _recording(monkeypatch: pytest.MonkeyPatch, order: list[str]) -> None:
    for op in ("devices", "status"):
        real = server_ops.HANDLERS[op]

        def handler(*args: Any, _op: str = op, _real: Any = real) -> Any:
            order.append(_op)
            return _real(*args)

        monkeypatch.setitem(server_ops.HANDLERS, op, handler)


async def test_on_a_socket_a_burst_in_one_read_yields_to_other_connections(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a socket the reader reads the fd itself (no scheduler pass per read): the
    # slice alone makes it yield.
    order: list[str] = []
    _recording(monkeypatch, order)
    async with running() as daemon:
        tenant = await connect(daemon, NOBODY, pair=socket_pair)
        admin = await connect(daemon, ROOT, pair=socket_pair)
        order.clear()
        await tenant.send(*(tenant.frame("devices")[1] for _ in range(BURST)))
        with trio.fail_after(60):
            while not order:
                await trio.sleep(0)
        assert (await admin.call("status"))["clients"] == 2
        assert 0 < order.index("status") < BURST
        for rid in range(2, 2 + BURST):
            assert (await tenant.reply(rid)).ok
        await tenant.aclose()
        await admin.aclose()


async def test_on_a_socket_reads_that_always_find_data_still_yield_by_the_slice(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many small reads, each finding the next one's data already there: the slice is
    # counted across reads, so the other connection is served before the last of them.
    order: list[str] = []
    _recording(monkeypatch, order)
    async with running() as daemon:
        tenant = await connect(daemon, NOBODY, pair=socket_pair)
        admin = await connect(daemon, ROOT, pair=socket_pair)
        reads: list[int] = []
        (conn,) = (c for c in daemon.connections.values() if not c.admin)
        real_receive = conn._receive

        async def one_frame_per_read() -> bytes | bytearray | None:
            data = await real_receive()
            reads.append(len(data or b""))
            return data

        monkeypatch.setattr(conn, "_receive", one_frame_per_read)
        n = 3 * REQUESTS_PER_SLICE  # one small write each: the socket buffer holds them
        frames = [tenant.frame("devices")[1] for _ in range(n)]
        # One frame per write, all written before the daemon runs again: each read
        # (the buffer is as large as the frame) finds the next frame already there.
        small = bytearray(len(frames[0]))
        monkeypatch.setattr(server_connection, "_READ_BUFFER", [small])
        monkeypatch.setattr(server_connection, "_READ_VIEW", memoryview(small))
        order.clear()
        client_fd = tenant.stream.socket.fileno()  # type: ignore[attr-defined]
        for f in frames:
            assert os.write(client_fd, f) == len(f)  # all there before the daemon runs
        with trio.fail_after(60):
            while not order:
                await trio.sleep(0)
        assert (await admin.call("status"))["clients"] == 2
        assert 0 < order.index("status") < n
        for rid in range(2, 2 + n):
            assert (await tenant.reply(rid)).ok
        assert len(reads) >= n
        await tenant.aclose()
        await admin.aclose()


async def test_a_teardown_of_hundreds_of_attachments_lets_others_be_served(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running() as daemon:
        tenant = await connect(daemon, NOBODY)
        dev = (await tenant.call("bind", rid=ACCEL0))["dev_id"]
        ioas = (await tenant.call("ioas_alloc"))["ioas_id"]
        hwpt = (await tenant.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=["pasid"]))["hwpt_id"]
        frames = [tenant.frame("attach", dev_id=dev, pt_id=hwpt, pasid=p)[1] for p in range(1, 400)]
        await tenant.send(*frames)
        for rid in range(5, 5 + len(frames)):
            assert (await tenant.reply(rid)).ok
        admin = await connect(daemon, ROOT)

        core = daemon.core
        real_steps = core.close_context_steps
        progress = {"steps": 0, "done": False}

        def steps(ctx: Any, now: int) -> Generator[None, None, None]:
            for _ in real_steps(ctx, now):
                progress["steps"] += 1
                yield
            progress["done"] = True

        monkeypatch.setattr(core, "close_context_steps", steps)
        await tenant.aclose()
        with trio.fail_after(60):
            while not progress["steps"]:
                await trio.sleep(0)
        # The admin is answered while the tenant's teardown is still going on.
        await admin.call("status")
        assert not progress["done"]
        with trio.fail_after(60):
            while len(daemon.connections) > 1:
                await trio.sleep(0.01)
        assert progress["done"]
        assert identity_holds(daemon)
        assert core.devices[ACCEL0].binding is None
