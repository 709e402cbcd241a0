"""Budgets per uid, in-process: connection slots (with the admins' reserve), objects and
mapped pages across one uid's connections, and unsent output per uid."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio
import trio.testing
from iopfd_inprocess import NOBODY, ROOT, Peer, connect, running

from iopfd.server.peer import PeerCred

OTHER = PeerCred(pid=4244, uid=1000, gid=1000, groups=frozenset())


async def _refused(peer: Peer) -> tuple[str, str]:
    [reply] = await peer.until_closed()
    assert reply.id is None
    return reply.code, reply.message


async def test_one_uid_is_capped_in_connections_and_other_uids_still_connect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(max_connections_per_uid=2) as daemon:
        held = [await connect(daemon, NOBODY) for _ in range(2)]
        code, message = await _refused(await connect(daemon, NOBODY, hello=False))
        assert code == "ENOSPC" and "uid 65534" in message
        assert (await connect(daemon, OTHER)).hello is not None
        assert (await connect(daemon, ROOT)).hello is not None
        status = await (await connect(daemon, ROOT)).call("status")
        assert status["counters"]["budget_refused_connections_uid"] == 1
        assert status["counters"]["budget_max_connections_uid"] == 2
        # A slot given back is a slot the uid may take again.
        await held[1].aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert (await connect(daemon, NOBODY)).hello is not None


async def test_slots_reserved_for_admins_keep_root_able_to_connect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(max_connections=6, admin_reserved_connections=2) as daemon:
        tenants = [NOBODY, OTHER, NOBODY, OTHER]
        for cred in tenants:
            assert (await connect(daemon, cred)).hello is not None
        code, message = await _refused(await connect(daemon, NOBODY, hello=False))
        assert code == "ENOSPC" and "reserved for admins" in message
        admins = [await connect(daemon, ROOT) for _ in range(2)]
        assert all(a.hello is not None for a in admins)
        assert (await _refused(await connect(daemon, ROOT, hello=False)))[0] == "ENOSPC"


async def test_objects_are_charged_to_the_uid_across_its_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(max_objects=10, max_objects_per_uid=3) as daemon:
        a, b = await connect(daemon, NOBODY), await connect(daemon, NOBODY)
        await a.call("ioas_alloc")
        await a.call("ioas_alloc")
        await b.call("ioas_alloc")
        assert await b.error("ioas_alloc") == "ENOSPC"
        other = await connect(daemon, OTHER)
        for _ in range(3):
            await other.call("ioas_alloc")
        await a.aclose()
        await trio.testing.wait_all_tasks_blocked()
        await b.call("ioas_alloc")  # a's objects went back to the uid's budget
        status = await (await connect(daemon, ROOT)).call("status")
        assert status["counters"]["budget_refused_objects_uid"] == 1
        rows = {row["uid"]: row for row in status["budgets"]}
        assert rows[NOBODY.uid]["objects"] == 2 and rows[OTHER.uid]["objects"] == 3  # b holds 2


async def test_mapped_pages_are_charged_to_the_uid_across_its_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(max_mapped_pages_per_uid=512) as daemon:
        a, b = await connect(daemon, NOBODY), await connect(daemon, NOBODY)
        ia = (await a.call("ioas_alloc"))["ioas_id"]
        ib = (await b.call("ioas_alloc"))["ioas_id"]
        await a.call("ioas_map", ioas_id=ia, iova=1 << 30, length=1 << 20, perm=3)
        assert (
            await b.error("ioas_map", ioas_id=ib, iova=1 << 30, length=2 << 20, perm=3) == "ENOSPC"
        )
        await b.call("ioas_map", ioas_id=ib, iova=1 << 30, length=1 << 20, perm=3)


async def test_unsent_output_is_capped_per_uid_across_its_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(max_frame=65536, max_outbuf=1 << 20, max_outbuf_per_uid=65536) as daemon:
        peers = [
            await connect(daemon, NOBODY, pair=trio.testing.lockstep_stream_pair) for _ in range(2)
        ]
        frame = peers[0].frame("topology")[1]
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(1000):
                for p in peers:
                    await p.send(frame)  # neither ever reads a reply
        # Each stayed far below max_outbuf; together they crossed the uid's budget.
        assert daemon.counters["outbuf_overflows"] == 1
        other = await connect(daemon, OTHER)
        assert (await other.call("devices"))["devices"]


async def test_a_group_left_unanswered_past_response_timeout_s_is_answered_by_the_daemon(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The shared-PRI policy over the wire: the hardware task wakes at the deadline.
    async with running(response_timeout_s=5.0) as daemon:
        c = await connect(daemon, ROOT)
        dev = (await c.call("bind", rid="0000:3a:00.0"))["dev_id"]
        ioas = (await c.call("ioas_alloc"))["ioas_id"]
        fq = (await c.call("fault_alloc"))["fault_id"]
        hwpt = (await c.call("hwpt_alloc", dev_id=dev, pt_id=ioas, fault_id=fq))["hwpt_id"]
        await c.call("attach", dev_id=dev, pt_id=hwpt)
        await c.call("inject", rid="0000:3a:00.0", addr=0x1000, perm=1, grpid=3, last=True)
        event = await c.event("fault")
        await trio.sleep(4.0)
        assert len((await c.call("pending"))["pending"]) == 1
        await trio.sleep(1.5)
        assert (await c.call("pending"))["pending"] == []
        counters = (await c.call("status"))["counters"]
        assert counters["response_timeouts"] == 1
        cookie = event.body["cookie"]
        assert (
            await c.error("page_response", fault_id=fq, responses=[{"cookie": cookie, "code": 0}])
            == "EINVAL"
        )


async def test_objects_and_pending_page_their_rows_and_say_where_the_next_page_starts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as daemon:
        c = await connect(daemon, ROOT)
        for _ in range(5):
            await c.call("ioas_alloc")
        first = await c.call("objects", limit=2)
        assert (len(first["objects"]), first["total"], first["next"]) == (2, 5, 2)
        last = await c.call("objects", offset=4, limit=2)
        assert (len(last["objects"]), last["next"]) == (1, None)
        assert (await c.call("objects"))["next"] is None  # no limit: every row
        assert await c.error("objects", limit=0) == "EINVAL"
        page = await c.call("pending", limit=10)
        assert (page["pending"], page["total"], page["next"]) == ([], 0, None)


async def test_a_connection_dropped_over_the_uids_output_budget_gives_its_bytes_back_at_once(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its teardown may take a while (sliced); meanwhile the uid's other connections
    are not charged for what the dropped one will never send."""
    release = trio.Event()
    async with running(max_frame=65536, max_outbuf=1 << 20, max_outbuf_per_uid=65536) as daemon:
        real_release = daemon.release_sliced

        async def slow_release(conn: Any) -> None:
            await release.wait()  # the teardown has not finished
            await real_release(conn)

        monkeypatch.setattr(daemon, "release_sliced", slow_release)
        flood = await connect(daemon, NOBODY, pair=trio.testing.lockstep_stream_pair)
        await flood.call("ioas_alloc")  # something to tear down
        quiet = await connect(daemon, NOBODY)
        frame = flood.frame("topology")[1]

        async def send_forever() -> None:  # never reads a reply
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                for _ in range(5000):
                    await flood.send(frame)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_forever)
                with trio.fail_after(60):
                    while not daemon.counters["outbuf_overflows"]:
                        await trio.sleep(0.01)
                dropped = next(c for c in daemon.connections.values() if c.closed)
                share = dropped.uid_out
                assert share is not None
                # The dropped connection is still tearing down, yet its bytes are gone.
                assert not dropped.released
                assert share.bytes == sum(
                    c.outbytes
                    for c in daemon.connections.values()
                    if c.cred.uid == 65534 and not c.closed
                )
                for _ in range(50):
                    assert (await quiet.call("devices"))["devices"]
                assert daemon.counters["outbuf_overflows"] == 1
                release.set()
                nursery.cancel_scope.cancel()
        finally:
            release.set()  # whatever happened, the teardown may finish
