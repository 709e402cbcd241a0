"""Fair, bounded work in-process: one connection's burst of requests, its teardown with
hundreds of attachments, an unbind of hundreds of PASIDs, an unmap of a big range or a
map whose IOVA the daemon searches for lets the other connections be served in
between."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest
import trio
import trio.testing
from iopfd_flows import ACCEL0
from iopfd_inprocess import NOBODY, ROOT, connect, identity_holds, running, socket_pair

from iopfd.core import ioas as ioas_module
from iopfd.core.ioas import UNMAP_PAGES_PER_STEP
from iopfd.server import connection as server_connection
from iopfd.server import ops as server_ops
from iopfd.server.connection import REQUESTS_PER_SLICE
from iopfd.server.peer import PeerCred

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
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        tenant, dev = await _tenant_with_pasids(daemon)
        admin = await connect(daemon, ROOT)

        # The teardown's progress, read from the core's state (the core may be compiled,
        # make accel, and then its methods cannot be wrapped): the device's attachments
        # go in bounded steps, and the context leaves core.contexts when the last ends.
        core = daemon.core
        handles = core.devices[ACCEL0].handles
        attached = len(handles)
        binding = core.devices[ACCEL0].binding
        assert binding is not None
        tenant_ctx = binding.ctx
        await tenant.aclose()
        with trio.fail_after(60):
            while len(handles) == attached:
                await trio.sleep(0)
        # The admin is answered while the tenant's teardown is still going on.
        await admin.call("status")
        assert tenant_ctx.id in core.contexts
        with trio.fail_after(60):
            while len(daemon.connections) > 1:
                await trio.sleep(0.01)
        assert not handles and tenant_ctx.id not in core.contexts
        assert identity_holds(daemon)
        assert core.devices[ACCEL0].binding is None


PASIDS = 399


async def _tenant_with_pasids(daemon: Any, *, fault: bool = False) -> tuple[Any, int]:
    """A tenant with ACCEL0 bound and attached at PASIDs 1..PASIDS through one HWPT (a
    fault-capable one with ``fault``); (the tenant, its dev_id)."""
    tenant = await connect(daemon, NOBODY)
    dev = (await tenant.call("bind", rid=ACCEL0))["dev_id"]
    ioas = (await tenant.call("ioas_alloc"))["ioas_id"]
    extra = {"fault_id": (await tenant.call("fault_alloc"))["fault_id"]} if fault else {}
    hwpt = (await tenant.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=["pasid"], **extra))[
        "hwpt_id"
    ]
    frames = [tenant.frame("attach", dev_id=dev, pt_id=hwpt, pasid=p) for p in range(1, PASIDS + 1)]
    await tenant.send(*(f for _, f in frames))
    for rid, _ in frames:
        assert (await tenant.reply(rid)).ok
    return tenant, dev


def _count_steps(monkeypatch: pytest.MonkeyPatch, op: str, progress: dict[str, int]) -> None:
    """``op``'s sliced results count their steps in ``progress`` (``_counting``); its
    other results pass as they are."""
    real = server_ops.HANDLERS[op]

    def handler(*args: Any) -> Any:
        result = real(*args)
        return _counting(progress, result) if isinstance(result, server_ops.Sliced) else result

    monkeypatch.setitem(server_ops.HANDLERS, op, handler)


def _counting(progress: dict[str, int], sliced: server_ops.Result) -> server_ops.Sliced:
    """``sliced`` with its steps counted in ``progress`` (``steps``, ``done``); after
    its first step it idles (empty steps) until ``progress["go"]`` is set, so a test
    sees what is served meanwhile whatever the scheduling order."""
    assert isinstance(sliced, server_ops.Sliced)
    inner = sliced.steps

    def steps() -> Generator[None, None, Any]:
        for _ in range(1_000_000):
            if progress["steps"] and not progress["go"]:
                yield
                continue
            try:
                next(inner)
            except StopIteration as stop:
                progress["done"] = 1
                return stop.value
            progress["steps"] += 1
            yield
        raise AssertionError("endless steps")

    sliced.steps = steps()
    return sliced


async def _served_while_sliced(
    daemon: Any, tenant: Any, admin: Any, progress: dict[str, int], *frames: bytes
) -> None:
    """Sends ``frames``; the admin is answered while the first one's steps go on."""
    await tenant.send(*frames)
    with trio.fail_after(60):
        while not progress["steps"]:
            await trio.sleep(0)
    await admin.call("status")
    assert not progress["done"]
    progress["go"] = 1


async def test_an_unbind_of_hundreds_of_pasids_lets_others_be_served_then_replies(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress = {"steps": 0, "done": 0, "go": 0}
    _count_steps(monkeypatch, "unbind", progress)
    async with running() as daemon:
        tenant, dev = await _tenant_with_pasids(daemon)
        admin = await connect(daemon, ROOT)
        unbind_id, unbind_frame = tenant.frame("unbind", dev_id=dev)
        # The tenant's next request waits for the unbind, as the ioctl's caller would:
        # the device is free by the time its bind runs.
        bind_id, bind_frame = tenant.frame("bind", rid=ACCEL0)
        await _served_while_sliced(daemon, tenant, admin, progress, unbind_frame, bind_frame)
        assert (await tenant.reply(unbind_id)).ok
        assert progress["done"] and progress["steps"] >= PASIDS // 64
        assert (await tenant.reply(bind_id)).ok
        assert identity_holds(daemon)
        assert not daemon.core.devices[ACCEL0].handles


async def test_an_unmap_of_a_big_range_lets_others_be_served_then_replies(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress = {"steps": 0, "done": 0, "go": 0}
    _count_steps(monkeypatch, "ioas_unmap", progress)
    chunk = UNMAP_PAGES_PER_STEP * 4096
    base = 1 << 32
    async with running() as daemon:
        tenant = await connect(daemon, NOBODY)
        ioas = (await tenant.call("ioas_alloc"))["ioas_id"]
        for i in range(3):
            await tenant.call("ioas_map", ioas_id=ioas, iova=base + i * chunk, length=chunk, perm=3)
        admin = await connect(daemon, ROOT)
        rid, frame = tenant.frame("ioas_unmap", ioas_id=ioas, iova=base, length=3 * chunk)
        await _served_while_sliced(daemon, tenant, admin, progress, frame)
        reply = await tenant.reply(rid)
        assert reply.ok and reply.result == {"unmapped": 3 * chunk}
        assert progress["steps"] == 2
        assert tenant_pages(daemon) == 0


def tenant_pages(daemon: Any) -> int:
    return sum(ctx.mapped_pages for ctx in daemon.core.contexts.values())


async def test_a_connection_closed_during_a_sliced_unbind_is_released_whole(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress = {"steps": 0, "done": 0, "go": 0}
    _count_steps(monkeypatch, "unbind", progress)
    async with running() as daemon:
        tenant, dev = await _tenant_with_pasids(daemon)
        admin = await connect(daemon, ROOT)
        _, unbind_frame = tenant.frame("unbind", dev_id=dev)
        await _served_while_sliced(daemon, tenant, admin, progress, unbind_frame)
        # The daemon drops the connection in the middle of the unbind.
        conn = next(c for c in daemon.connections.values() if not c.admin)
        conn.abort("test")
        with trio.fail_after(60):
            while len(daemon.connections) > 1:
                await trio.sleep(0.01)
        assert not progress["done"]
        assert identity_holds(daemon)
        assert daemon.core.devices[ACCEL0].binding is None
        assert not daemon.core.devices[ACCEL0].handles
        assert not any(c.objects for c in daemon.core.contexts.values())


async def test_a_map_whose_iova_the_daemon_picks_lets_others_be_served_then_replies(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ioas_module, "HOLE_AREAS_PER_STEP", 4)
    progress = {"steps": 0, "done": 0, "go": 0}
    _count_steps(monkeypatch, "ioas_map", progress)
    low = ioas_module.IOVA_ALLOC_START
    async with running() as daemon:
        tenant = await connect(daemon, NOBODY)
        ioas = (await tenant.call("ioas_alloc"))["ioas_id"]
        frames = [
            tenant.frame("ioas_map", ioas_id=ioas, iova=low + 2 * i * 4096, length=4096, perm=3)[1]
            for i in range(64)
        ]
        await tenant.send(*frames)
        for rid in range(3, 3 + len(frames)):
            assert (await tenant.reply(rid)).ok
        admin = await connect(daemon, ROOT)
        rid, frame = tenant.frame("ioas_map", ioas_id=ioas, length=2 * 4096, perm=3)
        await _served_while_sliced(daemon, tenant, admin, progress, frame)
        reply = await tenant.reply(rid)
        assert reply.ok and reply.result == {"iova": low + 128 * 4096}
        assert progress["done"] and progress["steps"] >= 64 // 4


async def test_a_shutdown_answers_every_pending_group_without_detaching_each_pasid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        tenant, dev = await _tenant_with_pasids(daemon, fault=True)
        admin = await connect(daemon, ROOT)
        await admin.call("inject", rid=ACCEL0, pasid=7, addr=0x1000, perm=1, grpid=1, last=True)
        await tenant.event("fault")
        detaches = daemon.core.counters["detaches"]
        daemon.shutdown("shutdown")
        assert daemon.connections == {}
        k = daemon.core.status_counters()
        assert k["auto_responses"] == 1 and identity_holds(daemon)
        assert daemon.core.counters["detaches"] == detaches


async def test_one_uids_many_connections_take_one_slice_at_a_time_between_them(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[int] = []  # the uid of each request run, in order
    real_devices = server_ops.HANDLERS["devices"]

    def devices(srv: Any, conn: Any, *args: Any) -> Any:
        ran.append(conn.cred.uid)
        return real_devices(srv, conn, *args)

    monkeypatch.setitem(server_ops.HANDLERS, "devices", devices)
    other = PeerCred(pid=4244, uid=1000, gid=1000, groups=frozenset())
    burst = 16 * REQUESTS_PER_SLICE
    # Every reply waits unread until the end: room for them all.
    async with running(max_outbuf=1 << 30, max_outbuf_per_uid=1 << 32) as daemon:
        many = [await connect(daemon, NOBODY) for _ in range(8)]
        one = await connect(daemon, other)
        # uid 1000 is still busy when uid 65534's bursts come in
        await one.send(*(one.frame("devices")[1] for _ in range(8 * burst)))
        for t in many:
            await t.send(*(t.frame("devices")[1] for _ in range(burst)))
        for t in many:
            for rid in range(2, 2 + burst):
                assert (await t.reply(rid)).ok
        for rid in range(2, 2 + 8 * burst):
            assert (await one.reply(rid)).ok
    # While uid 1000's one connection has work, uid 65534's eight connections take
    # one slice at a time between them, not one slice each, between two of its slices
    # (a few, as the event loop orders its tasks at random within a turn).
    first = ran.index(1000)
    last = max(i for i, uid in enumerate(ran) if uid == 1000)
    assert ran[first:last].count(65534) >= REQUESTS_PER_SLICE  # they did compete
    runs, run = [], 0
    for uid in ran[first:last]:
        if uid == 1000:
            runs.append(run)
            run = 0
        else:
            run += 1
    assert max(runs) <= 4 * REQUESTS_PER_SLICE, max(runs)
