"""The trio layer in-process: the real daemon over memory streams, under a MockClock.

No subprocess, no sleep as synchronisation: timeouts, back-offs and grace periods run in
virtual time (``autojump_clock``), and each test reads the frames the daemon wrote.
"""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing
from iopfd_flows import ACCEL0, IOVA, READ
from iopfd_inprocess import NOBODY, ROOT, Peer, connect, identity_holds, running, socket_pair

from iopfd.protocol.frames import encode_frame
from iopfd.protocol.ops import OPS
from iopfd.server import ops as server_ops
from iopfd.server.connection import now_ns

SUCCESS, INVALID = 0, 1


async def _fault_path(c: Peer, rid: str = ACCEL0) -> tuple[int, int, int]:
    """bind, IOAS, fault queue, fault-capable HWPT, attached: (dev_id, ioas_id, fault_id)."""
    dev = (await c.call("bind", rid=rid))["dev_id"]
    ioas = (await c.call("ioas_alloc"))["ioas_id"]
    fault = (await c.call("fault_alloc"))["fault_id"]
    hwpt = (await c.call("hwpt_alloc", dev_id=dev, pt_id=ioas, fault_id=fault))["hwpt_id"]
    await c.call("attach", dev_id=dev, pt_id=hwpt)
    return dev, ioas, fault


def test_the_daemon_has_one_handler_per_op_of_the_contract() -> None:
    assert server_ops.HANDLERS.keys() == OPS.keys()
    assert OPS.keys() >= server_ops.OBSERVING_OPS


# --- the session rules, through the daemon -------------------------------------------


def _dma_frame(rid: int, dev: int, iova: int) -> bytes:
    """A raw one-page READ ``dma`` frame with an id of the test's choosing."""
    return encode_frame(
        {"op": "dma", "id": rid, "dev_id": dev, "iova": iova, "length": 4096, "perm": READ}
    )


async def test_a_silent_connection_is_closed_with_eproto_at_the_hello_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(hello_timeout_s=7.5) as daemon:
        start = trio.current_time()
        c = await connect(daemon, hello=False)
        (err,) = await c.until_closed()
        assert (err.id, err.code, err.message) == (None, "EPROTO", "no hello within 7.5 s")
        assert trio.current_time() - start == pytest.approx(7.5)
        assert daemon.counters["protocol_errors"] == 1
        assert daemon.connections == {}


async def test_a_hello_in_time_lifts_the_hello_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(hello_timeout_s=5.0) as daemon:
        c = await connect(daemon, hello=False)
        await trio.sleep(4.9)  # virtual: the deadline is still ahead
        assert (await c.call("hello", version=2, client="late"))["version"] == 2
        await trio.sleep(60)
        assert (await c.call("devices"))["devices"]
        assert daemon.counters["protocol_errors"] == 0


async def test_a_connection_holding_nothing_is_closed_at_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(idle_timeout_s=120.0) as daemon:
        c = await connect(daemon)
        await trio.sleep(100)
        assert (await c.call("devices"))["devices"]  # a request restarts the clock
        start = trio.current_time()
        (err,) = await c.until_closed()
        assert (err.id, err.code, err.message) == (
            None,
            "EPROTO",
            "idle for 120 s holding nothing",
        )
        assert trio.current_time() - start == pytest.approx(120)
        assert daemon.connections == {}


async def test_a_connection_holding_an_object_or_a_subscription_is_never_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(idle_timeout_s=10.0) as daemon:
        holder = await connect(daemon, NOBODY)
        ioas = (await holder.call("ioas_alloc"))["ioas_id"]
        watcher = await connect(daemon, ROOT)
        await watcher.call("subscribe", topics=["fault"])
        idle = await connect(daemon, NOBODY)
        await trio.sleep(3600)
        assert await holder.call("ioas_map", ioas_id=ioas, iova=1 << 32, length=4096, perm=3)
        assert (await watcher.call("status"))["clients"] == 2
        (err,) = await idle.until_closed()
        assert err.code == "EPROTO"
        # Once it holds nothing again, the holder is timed out too.
        await holder.call("destroy", obj_id=ioas)
        (err,) = await holder.until_closed()
        assert err.message == "idle for 10 s holding nothing"


async def test_idle_timeout_zero_keeps_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(idle_timeout_s=0) as daemon:
        c = await connect(daemon)
        await trio.sleep(86400)
        assert (await c.call("devices"))["devices"]


async def test_a_request_before_hello_is_eproto_and_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        c = await connect(daemon, hello=False)
        await c.send(encode_frame({"op": "devices", "id": 11}))
        assert [(r.id, r.code) for r in await c.until_closed()] == [(11, "EPROTO")]
        assert daemon.connections == {}


async def test_admin_ops_are_eperm_for_a_peer_outside_the_admin_group(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        root = await connect(daemon)
        assert (await root.call("status"))["clients"] == 1
        other = await connect(daemon, NOBODY)
        assert other.hello is not None and other.hello["admin"] is False
        assert await other.error("status") == "EPERM"
        assert (await other.call("devices"))["devices"]  # the session goes on


async def test_a_framing_violation_is_eproto_closes_and_releases_the_device(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        c = await connect(daemon)
        await c.call("bind", rid=ACCEL0)
        await c.send(b"\x00\x00\x00\x00")  # a zero-length frame
        assert [r.code for r in await c.until_closed()] == ["EPROTO"]
        admin = await connect(daemon)
        assert await admin.call("bind", rid=ACCEL0)  # free again


async def test_connections_beyond_max_connections_get_enospc_and_are_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(max_connections=1) as daemon:
        first = await connect(daemon)
        refused = await connect(daemon, hello=False)
        assert [(r.id, r.code, r.message) for r in await refused.until_closed()] == [
            (None, "ENOSPC", "too many connections")
        ]
        assert daemon.counters["connections_refused"] == 1
        assert (await first.call("devices"))["devices"]


# --- deferred replies: the session owns the ids in flight ----------------------------


async def test_a_dma_id_in_flight_cannot_be_reused_and_dmas_in_flight_are_capped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(max_dma_inflight=2) as daemon:
        c = await connect(daemon)
        dev, _ioas, fault = await _fault_path(c)
        first = await c.send_request("dma", dev_id=dev, iova=IOVA, length=4096, perm=READ)
        await c.send(_dma_frame(first, dev, IOVA))
        assert (await c.reply(first)).code == "EINVAL"  # the duplicate's answer
        await c.send_request("dma", dev_id=dev, iova=IOVA + 0x1000, length=4096, perm=READ)
        assert await c.error("dma", dev_id=dev, iova=IOVA, length=4096, perm=READ) == "ENOSPC"
        cookies = [(await c.event("fault")).body["cookie"] for _ in range(2)]
        await c.call(
            "page_response",
            fault_id=fault,
            responses=[{"cookie": k, "code": INVALID} for k in cookies],
        )
        assert (await c.reply(first)).result["status"] == "invalid"
        # Answered: the id is free again.
        await c.send(_dma_frame(first, dev, IOVA))
        await c.event("fault")
        assert first in daemon.connections[1].session.deferred


async def test_a_dma_refused_by_the_core_frees_its_id_for_the_next_request_of_the_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        c = await connect(daemon)
        dev, _ioas, _fault = await _fault_path(c)
        await c.send(_dma_frame(77, 999, IOVA), _dma_frame(77, dev, IOVA))  # one read
        assert (await c.reply(77)).code == "ENOENT"
        await c.event("fault")  # the second dma 77 runs: the first freed its id
        assert daemon.connections[1].session.deferred == {77: "dma"}


# --- the batch: one service, one write ------------------------------------------------


async def test_a_read_of_many_requests_services_the_core_once_and_is_answered_in_one_write(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running() as daemon:
        c = await connect(daemon)
        await c.call("ioas_alloc")
        serviced: list[int] = []
        real = daemon.after_call

        def counting(now: int) -> None:
            serviced.append(now)
            real(now)

        monkeypatch.setattr(daemon, "after_call", counting)
        frames = [c.frame("ioas_alloc")[1] for _ in range(20)]
        reads = c.reads
        await c.send(*frames)
        for rid in range(3, 23):
            assert (await c.reply(rid)).ok
        assert c.reads == reads + 1
        assert len(serviced) == 1


async def test_an_observing_op_sees_the_batch_before_it_serviced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        c = await connect(daemon)
        dev, _ioas, fault = await _fault_path(c)
        dma = c.frame("dma", dev_id=dev, iova=IOVA, length=4096, perm=READ)
        pending = c.frame("pending")
        await c.send(dma[1], pending[1])
        rows = (await c.reply(pending[0])).result["pending"]
        assert [r["fault_id"] for r in rows] == [fault]


async def test_the_reader_answers_a_read_with_one_write_of_its_own_on_a_socket(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running() as daemon:
        c = await connect(daemon, pair=socket_pair)
        (conn,) = daemon.connections.values()
        writes: list[int] = []
        real_write = os.write

        def counting_write(fd: int, data: bytes) -> int:
            writes.append(fd)
            return real_write(fd, data)

        async def no_writer(data: bytes) -> None:
            raise AssertionError("the writer task sent; the reader should have")

        monkeypatch.setattr(os, "write", counting_write)
        monkeypatch.setattr(conn.stream, "send_all", no_writer)
        frames = [c.frame("ioas_alloc")[1] for _ in range(20)]
        await c.send(*frames)
        for rid in range(2, 22):
            assert (await c.reply(rid)).ok
        assert writes == [conn.stream.socket.fileno()]  # type: ignore[attr-defined]
        monkeypatch.undo()
        await c.aclose()


async def test_a_client_that_stops_reading_is_dropped_past_max_outbuf(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(max_frame=65536, max_outbuf=131072) as daemon:
        c = await connect(daemon, pair=trio.testing.lockstep_stream_pair)
        frame = c.frame("topology")[1]
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(10_000):
                await c.send(frame)  # never reads a reply
        assert daemon.counters["outbuf_overflows"] == 1
        assert daemon.connections == {}


# --- a bug of ours costs one request ---------------------------------------------------


async def test_an_exception_in_a_handler_costs_that_request_only(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_args: object) -> dict[str, object]:
        raise RuntimeError("bug")

    monkeypatch.setitem(server_ops.HANDLERS, "topology", boom)
    async with running() as daemon:
        c = await connect(daemon)
        reply = await c.reply(await c.send_request("topology"))
        assert (reply.code, reply.message) == ("EINVAL", "internal error: RuntimeError")
        assert daemon.counters["internal_errors"] == 1
        assert (await c.call("devices"))["devices"]


# --- the hardware task: it wakes at core.next_deadline() ------------------------------


async def test_retries_after_success_wake_the_hardware_task_at_their_back_off_deadlines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A SUCCESS answer without a mapping: the function retries at once, then after
    ``retry_backoff_ns`` (20 us), 40 us, 80 us (PCIe PRI retry with back-off); no request
    wakes the daemon meanwhile, the hardware task does, at ``core.next_deadline()``.
    (No response timeout here: its deadline would be the first one the task sees.)"""
    async with running(response_timeout_s=0) as daemon:
        c = await connect(daemon)
        dev, _ioas, fault = await _fault_path(c)
        rid = await c.send_request("dma", dev_id=dev, iova=IOVA, length=4096, perm=READ)
        cookie = (await c.event("fault")).body["cookie"]
        waits = []
        for _ in range(4):
            await c.call(
                "page_response", fault_id=fault, responses=[{"cookie": cookie, "code": SUCCESS}]
            )
            answered = now_ns()
            deadline = daemon.core.next_deadline()
            cookie = (await c.event("fault")).body["cookie"]
            waits.append((None if deadline is None else deadline - answered, now_ns() - answered))
        assert waits == [(None, 0), (20_000, 20_000), (40_000, 40_000), (80_000, 80_000)]
        await c.call(
            "page_response", fault_id=fault, responses=[{"cookie": cookie, "code": INVALID}]
        )
        assert (await c.reply(rid)).result["status"] == "invalid"
        assert identity_holds(daemon)


# --- unplug: the grace period ---------------------------------------------------------


async def test_unplug_forces_the_removal_when_the_grace_period_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        vmm = await connect(daemon, name="vmm")
        admin = await connect(daemon, name="admin")
        dev = (await vmm.call("bind", rid=ACCEL0))["dev_id"]
        start = trio.current_time()
        rid = await admin.send_request("unplug", rid=ACCEL0, grace_s=5.0)
        request = await vmm.event("device_request")
        assert request.body == {"dev_id": dev, "rid": ACCEL0}
        reply = await admin.reply(rid)  # the VMM never lets go
        assert reply.result == {"forced": True}
        assert trio.current_time() - start == pytest.approx(5.0)
        assert daemon.core.status_counters()["forced_unplugs"] == 1
        assert await vmm.error("dma", dev_id=dev, iova=IOVA, length=4096, perm=READ) == "ENODEV"


async def test_unplug_replies_as_soon_as_the_owner_unbinds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        vmm = await connect(daemon, name="vmm")
        admin = await connect(daemon, name="admin")
        dev = (await vmm.call("bind", rid=ACCEL0))["dev_id"]
        start = trio.current_time()
        rid = await admin.send_request("unplug", rid=ACCEL0, grace_s=60.0)
        await vmm.event("device_request")
        await trio.sleep(2.0)
        await vmm.call("unbind", dev_id=dev)
        assert (await admin.reply(rid)).result == {"forced": False}
        assert trio.current_time() - start == pytest.approx(2.0)


async def test_an_unplug_id_in_flight_cannot_be_reused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        vmm = await connect(daemon, name="vmm")
        admin = await connect(daemon, name="admin")
        await vmm.call("bind", rid=ACCEL0)
        rid = await admin.send_request("unplug", rid=ACCEL0, grace_s=5.0)
        await vmm.event("device_request")
        again = encode_frame({"op": "unplug", "id": rid, "rid": ACCEL0})
        await admin.send(again)
        assert (await admin.reply(rid)).code == "EINVAL"
        assert (await admin.reply(rid)).result == {"forced": True}


# --- release ----------------------------------------------------------------------------


async def test_a_disconnect_answers_the_pending_groups_and_frees_the_device(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        c = await connect(daemon)
        dev, _ioas, _fault = await _fault_path(c)
        await c.send_request("dma", dev_id=dev, iova=IOVA, length=4096, perm=READ)
        await c.event("fault")
        assert daemon.core.pending(now_ns())
        await c.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert daemon.connections == {}
        assert daemon.core.pending(now_ns()) == []
        assert identity_holds(daemon)
        other = await connect(daemon)
        assert await other.call("bind", rid=ACCEL0)
