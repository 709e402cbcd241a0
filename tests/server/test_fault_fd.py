"""The ``fault_fd`` op in-process: the real daemon over a real socketpair (fds need a
Unix socket), under a MockClock. Groups go out on the passed fd as kernel records,
answers come back through it; closing it returns the queue to ``fault`` events.

Nothing here waits on time: each test waits for a state of the daemon (a counter, a
closed fd) with ``_until``, which only yields to the loop.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from iopfd_flows import ACCEL0, IOVA, LAST_PAGE, READ
from iopfd_inprocess import WAIT_S, Peer, connect, identity_holds, running, socket_pair

from iopfd.protocol.uapi import decode_records, encode_responses
from iopfd.server.connection import now_ns
from iopfd.server.daemon import Daemon

SUCCESS, INVALID = 0, 1


async def _until(cond: Callable[[], bool]) -> None:
    """Yield to the daemon's tasks until ``cond`` holds (no clock involved)."""
    with trio.fail_after(WAIT_S):
        while not cond():
            await trio.sleep(0)


async def _fault_path(c: Peer, rid: str = ACCEL0) -> tuple[int, int, int, int]:
    dev = (await c.call("bind", rid=rid))["dev_id"]
    ioas = (await c.call("ioas_alloc"))["ioas_id"]
    fault = (await c.call("fault_alloc"))["fault_id"]
    hwpt = (await c.call("hwpt_alloc", dev_id=dev, pt_id=ioas, fault_id=fault))["hwpt_id"]
    await c.call("attach", dev_id=dev, pt_id=hwpt)
    return dev, ioas, fault, hwpt


async def _open_fd(c: Peer, fault_id: int) -> trio.socket.SocketType:
    assert await c.call("fault_fd", fault_id=fault_id) == {}
    assert len(c.fds) == 1, "the reply passed exactly one fd"
    sock = socket.socket(fileno=c.fds.pop())
    assert (sock.family, sock.type) == (socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return trio.socket.from_stdlib_socket(sock)


async def _fault_fd_path(
    daemon: Daemon,
) -> tuple[Peer, tuple[int, int, int, int], trio.socket.SocketType]:
    """A connection with a fault-capable attachment whose queue delivers on a fault fd:
    (peer, (dev, ioas, fault, hwpt), fd)."""
    c = await _connect(daemon)
    path = await _fault_path(c)
    return c, path, await _open_fd(c, path[2])


async def _inject(c: Peer, n: int, first_grpid: int = 1) -> None:
    """``n`` one-request groups on ACCEL0's RID, in one write."""
    frames = [
        c.frame(
            "inject", rid=ACCEL0, addr=IOVA + i * 4096, perm=READ, grpid=first_grpid + i, last=True
        )
        for i in range(n)
    ]
    await c.send(*(f for _rid, f in frames))
    for rid, _f in frames:
        assert (await c.reply(rid)).ok


async def _packets(fd: trio.socket.SocketType, n: int) -> list[list[dict[str, int]]]:
    out = []
    with trio.fail_after(WAIT_S):
        for _ in range(n):
            out.append(decode_records(await fd.recv(1 << 16)))
    return out


def _pending(daemon: Daemon) -> set[int]:
    return {int(str(row["cookie"])) for row in daemon.core.pending(now_ns())}


_PEERS: list[Peer] = []


async def _connect(daemon: Daemon, **kwargs: object) -> Peer:
    """A connection over a real socketpair (closed at the end of ``_daemon``)."""
    kwargs.setdefault("pair", socket_pair)
    peer = await connect(daemon, **kwargs)  # type: ignore[arg-type]
    _PEERS.append(peer)
    return peer


@asynccontextmanager
async def _daemon(**limits: int) -> AsyncIterator[Daemon]:
    """A daemon whose fault fd tasks must hit no internal error, and after which the
    exactly-once identity holds."""
    async with running(**limits) as daemon:
        try:
            yield daemon
            await trio.testing.wait_all_tasks_blocked()
            assert daemon.counters["internal_errors"] == 0
        finally:
            while _PEERS:
                await _PEERS.pop().aclose()
    assert identity_holds(daemon)


async def test_groups_go_out_on_the_fd_in_order_and_answers_written_to_it_apply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _daemon() as daemon:
        c, (_dev, _ioas, fault, _hwpt), fd = await _fault_fd_path(daemon)
        await _inject(c, 5)
        groups = await _packets(fd, 5)
        assert [len(g) for g in groups] == [1] * 5
        assert [g[0]["grpid"] for g in groups] == [1, 2, 3, 4, 5]
        assert [g[0]["addr"] for g in groups] == [IOVA + i * 4096 for i in range(5)]
        assert all(g[0]["flags"] == LAST_PAGE and g[0]["perm"] == READ for g in groups)
        cookies = [g[0]["cookie"] for g in groups]
        assert cookies == sorted(cookies)
        assert not c.events, "no fault event while the fd is open"
        assert daemon.counters["fault_fd_packets"] == 5

        # As write(): applied in order up to the bad cookie, nothing after it.
        await fd.send(encode_responses([(cookies[0], SUCCESS), (cookies[1], INVALID), (999, 0)]))
        await fd.send(encode_responses([(cookies[2], SUCCESS)]))
        await _until(lambda: daemon.counters["fault_fd_writes"] == 2)
        assert _pending(daemon) == set(cookies[3:])
        # A refused first entry and a malformed packet are counted; the fd stays open.
        await fd.send(encode_responses([(cookies[0], SUCCESS), (cookies[3], SUCCESS)]))
        await fd.send(b"\x01" * 7)
        await _until(lambda: daemon.counters["fault_fd_malformed"] == 1)
        assert daemon.counters["fault_fd_refused"] == 1
        assert _pending(daemon) == set(cookies[3:]), "a refused first entry applies nothing"
        await fd.send(encode_responses([(cookies[3], 2), (cookies[4], SUCCESS)]))  # bad code
        await _until(lambda: daemon.counters["fault_fd_refused"] == 2)
        await fd.send(encode_responses([(cookies[3], SUCCESS), (cookies[4], SUCCESS)]))
        await _until(lambda: not _pending(daemon))
        assert fault in daemon.connections[1].fault_fds
        assert identity_holds(daemon)
        fd.close()


async def test_a_dma_fault_is_answered_through_the_fd(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _daemon() as daemon:
        c, (dev, ioas, fault, _hwpt), fd = await _fault_fd_path(daemon)
        dma = await c.send_request("dma", dev_id=dev, iova=IOVA, length=4096, perm=READ)
        ((rec,),) = await _packets(fd, 1)
        assert rec["addr"] == IOVA and rec["dev_id"] == dev
        await c.call("ioas_map", ioas_id=ioas, iova=IOVA, length=4096, perm=READ)
        await fd.send(encode_responses([(rec["cookie"], SUCCESS)]))
        reply = await c.reply(dma)
        assert reply.ok and reply.result["status"] == "ok"
        fd.close()


async def test_closing_the_fd_returns_the_queue_to_events_and_leaves_its_groups_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _daemon() as daemon:
        c, (_dev, _ioas, fault, _hwpt), fd = await _fault_fd_path(daemon)
        conn = daemon.connections[1]
        await _inject(c, 2)
        written = [g[0]["cookie"] for g in await _packets(fd, 2)]
        fd.close()
        await _until(lambda: fault not in conn.fault_fds)
        assert _pending(daemon) == set(written), "closing the fd answers nothing"
        await _inject(c, 1, first_grpid=9)
        ev = await c.event("fault")
        assert ev.body["fault_id"] == fault and ev.body["faults"][0]["grpid"] == 9
        # The groups written to the fd stay answerable with page_response.
        responses = [{"cookie": k, "code": SUCCESS} for k in [*written, ev.body["cookie"]]]
        assert await c.call("page_response", fault_id=fault, responses=responses) == {"done": 3}
        # A second fault fd after the first was closed works.
        fd2 = await _open_fd(c, fault)
        await _inject(c, 1, first_grpid=10)
        ((rec,),) = await _packets(fd2, 1)
        assert rec["grpid"] == 10
        await fd2.send(encode_responses([(rec["cookie"], SUCCESS)]))
        await _until(lambda: not _pending(daemon))
        fd2.close()


async def test_a_second_fault_fd_is_ebusy_a_foreign_queue_enoent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _daemon() as daemon:
        c, (_dev, ioas, fault, _hwpt), fd = await _fault_fd_path(daemon)
        assert await c.error("fault_fd", fault_id=fault) == "EBUSY"
        assert await c.error("fault_fd", fault_id=ioas) == "ENOENT"  # not a fault queue
        assert await c.error("fault_fd", fault_id=4242) == "ENOENT"
        other = await _connect(daemon)
        assert await other.error("fault_fd", fault_id=fault) == "ENOENT"
        assert await other.error("fault_fd", fault_id=-1) == "EINVAL"
        assert not c.fds and not other.fds, "no fd with an error"
        fd.close()


async def test_a_connection_that_cannot_carry_fds_is_eopnotsupp(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _daemon() as daemon:
        c = await _connect(daemon, pair=trio.testing.memory_stream_pair)
        fault = (await c.call("fault_alloc"))["fault_id"]
        assert await c.error("fault_fd", fault_id=fault) == "EOPNOTSUPP"


async def test_the_reply_carrying_the_fd_comes_after_every_frame_queued_before_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _daemon() as daemon:
        c = await _connect(daemon)
        fault = (await c.call("fault_alloc"))["fault_id"]
        frames = [c.frame("devices") for _ in range(3)]
        rid, fd_frame = c.frame("fault_fd", fault_id=fault)
        after = c.frame("devices")
        await c.send(*(f for _r, f in frames), fd_frame, after[1])
        for r, _f in [*frames, (rid, b""), after]:
            assert (await c.reply(r)).ok
        assert len(c.fds) == 1
        socket.socket(fileno=c.fds.pop()).close()
        await _until(lambda: not daemon.connections[1].fault_fds)


async def test_destroying_the_queue_closes_the_daemons_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _daemon() as daemon:
        c, (dev, _ioas, fault, hwpt), fd = await _fault_fd_path(daemon)
        await _inject(c, 1)
        await _packets(fd, 1)
        await c.call("detach", dev_id=dev)  # answers the pending group INVALID
        await c.call("destroy", obj_id=hwpt)
        await c.call("destroy", obj_id=fault)
        assert not daemon.connections[1].fault_fds
        with trio.fail_after(WAIT_S):
            assert await fd.recv(1 << 16) == b"", "EOF: the daemon closed its end"
        fd.close()


async def test_closing_the_connection_closes_the_daemons_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _daemon() as daemon:
        c, (_dev, _ioas, fault, _hwpt), fd = await _fault_fd_path(daemon)
        await _inject(c, 2)
        await _packets(fd, 1)
        await c.aclose()
        await _until(lambda: not daemon.connections)
        assert _pending(daemon) == set(), "the connection's groups were answered"
        with trio.fail_after(WAIT_S):
            assert len(await fd.recv(1 << 16)) == 40  # the second, written before the close
            assert await fd.recv(1 << 16) == b""
        fd.close()


async def test_a_full_fd_backlogs_groups_in_order_without_blocking_the_daemon(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _daemon() as daemon:
        c, (_dev, _ioas, fault, _hwpt), fd = await _fault_fd_path(daemon)
        ffd = daemon.connections[1].fault_fds[fault]
        ffd.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the minimum
        await _inject(c, 40)
        assert ffd.backlog, "the peer's buffer filled up"
        assert (await c.call("devices"))["devices"], "the daemon still serves"
        groups = await _packets(fd, 40)
        assert [g[0]["grpid"] for g in groups] == list(range(1, 41))
        await _until(lambda: not ffd.backlog)
        await fd.send(encode_responses([(g[0]["cookie"], SUCCESS) for g in groups]))
        await _until(lambda: not _pending(daemon))
        assert daemon.counters["fault_fd_overflows"] == 0
        fd.close()


async def test_the_backlog_is_bounded_by_max_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _daemon(max_pending=4) as daemon:
        c, (_dev, _ioas, fault, _hwpt), fd = await _fault_fd_path(daemon)
        ffd = daemon.connections[1].fault_fds[fault]
        assert ffd.max_backlog == 4
        ffd.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
        await _inject(c, 30)
        assert len(ffd.backlog) <= 4
        assert daemon.core.status_counters()["throttled"] == 30 - 4
        groups = await _packets(fd, 4)
        await fd.send(encode_responses([(g[0]["cookie"], SUCCESS) for g in groups]))
        await _until(lambda: not _pending(daemon))
        fd.close()


async def test_the_backlog_goes_out_as_events_when_the_peer_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _daemon() as daemon:
        c, (_dev, _ioas, fault, _hwpt), fd = await _fault_fd_path(daemon)
        conn = daemon.connections[1]
        ffd = conn.fault_fds[fault]
        ffd.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
        await _inject(c, 20)
        backlogged = [ev.cookie for ev in ffd.backlog]
        assert backlogged
        fd.close()  # unread: the packets in it are lost to the client, still pending
        await _until(lambda: fault not in conn.fault_fds)
        events = [await c.event("fault") for _ in backlogged]
        assert [ev.body["cookie"] for ev in events] == backlogged
        assert len(_pending(daemon)) == 20
        responses = [{"cookie": k, "code": INVALID} for k in sorted(_pending(daemon))]
        assert await c.call("page_response", fault_id=fault, responses=responses) == {"done": 20}


@pytest.mark.parametrize("packet", [b"", b"\x00" * 8])
async def test_an_empty_or_unknown_answer_packet_is_not_eof(
    autojump_clock: trio.testing.MockClock, packet: bytes
) -> None:
    async with _daemon() as daemon:
        c, (_dev, _ioas, fault, _hwpt), fd = await _fault_fd_path(daemon)
        await fd.send(packet)
        await fd.send(b"\x00" * 3)
        await _until(lambda: daemon.counters["fault_fd_malformed"] == 1)
        assert fault in daemon.connections[1].fault_fds
        fd.close()
