"""The trio client library against a scripted fake daemon (no hwmodel, no core)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio

from clients import (
    Busy,
    ConnectionLost,
    DmaStatus,
    EventGap,
    FaultGroup,
    InvalidArgument,
    IopfClient,
    IopfError,
    NoSuchObject,
    Perm,
    ResponseCode,
    resolve_socket_path,
)

# late import of the conftest's helpers under importlib import mode
from tests.clients.conftest import DEFER, FakeConn, FakeDaemon, FakeErr

# (method, args, kwargs, expected wire arguments, canned result, expected return)
OPS: list[tuple[str, tuple[Any, ...], dict[str, Any], dict[str, Any], dict[str, Any], Any]] = [
    ("bind", ("0000:3a:00.0",), {}, {"rid": "0000:3a:00.0"}, {"dev_id": 7}, 7),
    ("unbind", (7,), {}, {"dev_id": 7}, {}, None),
    ("ioas_alloc", (), {}, {}, {"ioas_id": 8}, 8),
    (
        "ioas_map",
        (8, 0x1000, 0x2000),
        {},
        {"ioas_id": 8, "iova": 0x1000, "length": 0x2000, "perm": 3},
        {"iova": 0x1000},
        0x1000,
    ),
    (
        "ioas_map",
        (8, None, 0x2000),
        {},
        {"ioas_id": 8, "length": 0x2000, "perm": 3},
        {"iova": 0x10_0000},
        0x10_0000,
    ),
    (
        "hw_info",
        (7,),
        {},
        {"dev_id": 7},
        {"type": "intel_vtd", "flags": 0, "cap_reg": 6, "ecap_reg": 2},
        {"type": "intel_vtd", "flags": 0, "cap_reg": 6, "ecap_reg": 2},
    ),
    (
        "ioas_unmap",
        (8, 0x1000, 0x2000),
        {},
        {"ioas_id": 8, "iova": 0x1000, "length": 0x2000},
        {"unmapped": 0x2000},
        0x2000,
    ),
    ("fault_alloc", (), {}, {}, {"fault_id": 9}, 9),
    (
        "hwpt_alloc",
        (7, 8),
        {"fault_id": 9},
        {"dev_id": 7, "pt_id": 8, "flags": [], "fault_id": 9},
        {"hwpt_id": 10},
        10,
    ),
    (
        "hwpt_alloc",
        (7, 10),
        {"data": {"type": "vtd_s1"}},
        {"dev_id": 7, "pt_id": 10, "flags": [], "data": {"type": "vtd_s1"}},
        {"hwpt_id": 11},
        11,
    ),
    ("attach", (7, 10), {}, {"dev_id": 7, "pt_id": 10}, {"hwpt_id": 10}, 10),
    ("attach", (7, 3), {}, {"dev_id": 7, "pt_id": 3}, {"hwpt_id": 12}, 12),  # an IOAS
    ("attach", (7, 10, 5), {}, {"dev_id": 7, "pt_id": 10, "pasid": 5}, {"hwpt_id": 10}, 10),
    (
        "replace",
        (7, 11),
        {"pasid": 5},
        {"dev_id": 7, "pt_id": 11, "pasid": 5},
        {"hwpt_id": 11},
        11,
    ),
    ("detach", (7,), {}, {"dev_id": 7}, {}, None),
    (
        "page_response",
        (9, [(1, 0), (2, 1)]),
        {},
        {"fault_id": 9, "responses": [{"cookie": 1, "code": 0}, {"cookie": 2, "code": 1}]},
        {"done": 1},
        1,
    ),
    ("destroy", (10,), {}, {"obj_id": 10}, {}, None),
    ("device_reset", (7,), {}, {"dev_id": 7}, {}, None),
    (
        "hwpt_s1_map",
        (11, 0x4000, 0x1000, 0x8000, Perm.READ),
        {},
        {"hwpt_id": 11, "iova": 0x4000, "length": 0x1000, "gpa": 0x8000, "perm": 1},
        {},
        None,
    ),
    (
        "hwpt_s1_unmap",
        (11, 0x4000, 0x1000),
        {},
        {"hwpt_id": 11, "iova": 0x4000, "length": 0x1000},
        {"unmapped": 4096},
        4096,
    ),
    ("hwpt_invalidate", (11,), {}, {"hwpt_id": 11}, {}, None),
    ("hwpt_invalidate", (11, 0, 4096), {}, {"hwpt_id": 11, "iova": 0, "length": 4096}, {}, None),
    ("topology", (), {}, {}, {"iommus": [], "devices": []}, {"iommus": [], "devices": []}),
    (
        "objects",
        (),
        {},
        {},
        {"objects": [], "future": 1},
        {"objects": [], "future": 1, "total": 0, "next": None},
    ),
    (
        "objects",
        (4, 2),
        {},
        {"offset": 4, "limit": 2},
        {"objects": [{"id": 9}], "total": 5, "next": None},
        {"objects": [{"id": 9}], "total": 5, "next": None},
    ),
    (
        "inject",
        ("0000:3a:00.0", 0x1000, 1, 4),
        {"pasid": 3},
        {"rid": "0000:3a:00.0", "addr": 0x1000, "perm": 1, "grpid": 4, "last": True, "pasid": 3},
        {},
        None,
    ),
    (
        "unplug",
        ("0000:3a:00.0",),
        {},
        {"rid": "0000:3a:00.0", "force": False, "grace_s": 10.0},
        {"forced": False},
        False,
    ),
    (
        "unplug",
        ("0000:3a:00.0",),
        {"force": True, "grace_s": 2},
        {"rid": "0000:3a:00.0", "force": True, "grace_s": 2.0},
        {"forced": True},
        True,
    ),
    ("plug", ("0000:3a:00.0",), {}, {"rid": "0000:3a:00.0"}, {}, None),
    ("reset", ("0000:3a:00.0",), {}, {"rid": "0000:3a:00.0"}, {}, None),
]


@pytest.mark.parametrize(("method", "args", "kwargs", "wire", "result", "ret"), OPS)
async def test_each_op_sends_its_exact_wire_arguments_and_decodes_its_result(
    fake: FakeDaemon,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wire: dict[str, Any],
    result: dict[str, Any],
    ret: Any,
) -> None:
    fake.results[method] = result
    async with IopfClient.open(fake.path, client_name="unit") as c:
        got = await getattr(c, method)(*args, **kwargs)
    req = fake.conns[0].requests[-1]
    assert req["op"] == method
    assert {k: v for k, v in req.items() if k not in ("op", "id")} == wire
    assert got == ret


async def test_hello_is_the_first_request_and_reports_admin(fake: FakeDaemon) -> None:
    async with IopfClient.open(fake.path, client_name="vmm-a") as c:
        assert c.admin
        assert c.hello_info is not None and c.hello_info.server == "fake/0"
        assert c.hello_info.kernel == "6.18" and c.hello_info.pasid_attach
        assert c.hello_info.paging_fault_hwpt
    first = fake.conns[0].requests[0]
    assert first["op"] == "hello" and first["version"] == 2 and first["client"] == "vmm-a"


async def test_typed_results_for_devices_status_pending_and_dma(fake: FakeDaemon) -> None:
    fake.results["devices"] = {
        "devices": [
            {
                "rid": "0000:3a:00.0",
                "iommu": "dmar0",
                "pri": True,
                "ats": True,
                "pasid_bits": 20,
                "pf": None,
                "state": "free",
                "pri_enabled": False,
            },
            {
                "rid": "0000:3a:00.1",
                "iommu": "dmar0",
                "pri": True,
                "ats": True,
                "pasid_bits": 0,
                "pf": "0000:3a:00.0",
                "state": "bound",
            },
        ]
    }
    fake.results["status"] = {
        "version": 2,
        "kernel": "6.12",
        "uptime_s": 1.5,
        "clients": 2,
        "counters": {"groups": 4},
    }
    fake.results["pending"] = {
        "pending": [
            {
                "fault_id": 9,
                "cookie": 3,
                "rid": "0000:3a:00.0",
                "pasid": None,
                "age_s": 0.25,
                "client": "x",
            }
        ]
    }
    fake.results["dma"] = {"status": "invalid", "faults": 2, "bytes": 0}
    async with IopfClient.open(fake.path) as c:
        devs = await c.devices()
        st = await c.status()
        pend = await c.pending()
        res = await c.dma(1, 0x1000, 0x1000, Perm.READ, pasid=2)
    assert devs[0].pasid and not devs[0].is_vf and devs[0].extra == {"pri_enabled": False}
    assert devs[1].is_vf and devs[1].pf == "0000:3a:00.0"
    assert st.counters["groups"] == 4 and st.clients == 2 and st.kernel == "6.12"
    assert "kernel" not in st.extra
    assert pend[0].cookie == 3 and pend[0].pasid is None and pend[0].extra["client"] == "x"
    assert res.status == DmaStatus.INVALID and not res.ok and res.faults == 2
    assert fake.conns[0].requests[-1]["pasid"] == 2


async def test_error_reply_raises_the_errno_subclass_and_keeps_the_connection(
    fake: FakeDaemon,
) -> None:
    @fake.on("bind")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        raise FakeErr("EBUSY", "held by vmm-b")

    fake.results["ioas_alloc"] = {"ioas_id": 2}
    async with IopfClient.open(fake.path) as c:
        with pytest.raises(Busy) as ei:
            await c.bind("0000:3a:00.0")
        assert ei.value.errno == "EBUSY" and ei.value.op == "bind"
        assert "held by vmm-b" in str(ei.value)
        assert await c.ioas_alloc() == 2


async def test_unknown_errno_is_a_plain_iopf_error(fake: FakeDaemon) -> None:
    @fake.on("ioas_alloc")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        raise FakeErr("EWHATEVER", "future errno")

    async with IopfClient.open(fake.path) as c:
        with pytest.raises(IopfError) as ei:
            await c.ioas_alloc()
    assert type(ei.value) is IopfError and ei.value.errno == "EWHATEVER"


async def test_body_exception_propagates_unwrapped_out_of_open(fake: FakeDaemon) -> None:
    with pytest.raises(NoSuchObject):
        async with IopfClient.open(fake.path):
            raise NoSuchObject("ENOENT", "x")


async def test_dma_reply_waits_while_its_fault_is_answered_on_the_same_connection(
    fake: FakeDaemon,
) -> None:
    answered = trio.Event()
    answers: list[Any] = []

    @fake.on("dma")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        await conn.fault(9, 1, [0x1000, 0x2000])
        await answered.wait()
        await conn.reply(req, {"status": "ok", "faults": 2, "bytes": 8192})
        return DEFER

    @fake.on("page_response")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        answers.append(req["responses"])
        answered.set()
        return {"done": 1}

    fake.results["fault_alloc"] = {"fault_id": 9}
    async with IopfClient.open(fake.path) as c:
        fid = await c.fault_alloc()
        groups: list[FaultGroup] = []

        async def handler() -> None:
            async for g in c.fault_queue(fid):
                groups.append(g)
                await c.answer(g, ResponseCode.SUCCESS)
                return

        async with trio.open_nursery() as n:
            n.start_soon(handler)
            res = await c.dma(1, 0x1000, 0x2000, Perm.READ | Perm.WRITE)
    assert res.ok and res.faults == 2
    assert answers == [[{"cookie": 1, "code": 0}]]
    g = groups[0]
    assert g.addresses == [0x1000, 0x2000] and g.records[-1].last_page
    assert g.pasid is None and g.grpid == 3 and g.received_ns > 0


async def test_replies_are_matched_by_id_not_by_order(fake: FakeDaemon) -> None:
    release = trio.Event()

    @fake.on("ioas_alloc")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        await release.wait()
        return {"ioas_id": 100}

    @fake.on("fault_alloc")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        release.set()
        return {"fault_id": 200}

    async with IopfClient.open(fake.path) as c:
        got: dict[str, int] = {}

        async def slow() -> None:
            got["ioas"] = await c.ioas_alloc()

        async with trio.open_nursery() as n:
            n.start_soon(slow)
            await trio.sleep(0.01)
            got["fault"] = await c.fault_alloc()
    assert got == {"ioas": 100, "fault": 200}


async def test_throttled_count_reaches_the_group(fake: FakeDaemon) -> None:
    async with IopfClient.open(fake.path) as c:
        await fake.conns[0].fault(4, 17, [0x5000], throttled=6)
        g = await c.fault_queue(4).receive()
    assert (g.fault_id, g.cookie, g.throttled) == (4, 17, 6)


async def test_seq_gap_is_raised_once_by_the_fault_iterator_which_then_continues(
    fake: FakeDaemon,
) -> None:
    async with IopfClient.open(fake.path) as c:
        conn = fake.conns[0]
        q = c.fault_queue(4)
        await conn.fault(4, 1, [0x1000])
        await conn.fault(4, 2, [0x2000], seq=5)  # events 2..4 never arrived
        assert (await q.receive()).cookie == 1
        with pytest.raises(EventGap) as ei:
            await q.receive()
        assert (ei.value.expected, ei.value.got) == (2, 5)
        assert (await q.receive()).cookie == 2
        st = c.stats()
    assert st.seq_gaps == 1 and st.missed_events == 3


async def test_lost_connection_fails_waiting_and_later_calls_with_connection_lost(
    fake: FakeDaemon,
) -> None:
    @fake.on("dma")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        await conn.stream.aclose()
        return DEFER

    async with IopfClient.open(fake.path) as c:
        q = c.fault_queue(1)
        with pytest.raises(ConnectionLost, match="dma"):
            await c.dma(1, 0, 4096, Perm.READ)
        with pytest.raises(ConnectionLost):
            await c.ioas_alloc()
        with pytest.raises(ConnectionLost):
            await q.receive()
        assert c.closed


async def test_eproto_with_null_id_closes_the_client_with_the_daemons_reason(
    fake: FakeDaemon,
) -> None:
    @fake.on("ioas_alloc")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        await conn.send(
            {"id": None, "ok": False, "error": {"code": "EPROTO", "message": "bad frame"}}
        )
        return DEFER

    async with IopfClient.open(fake.path) as c:
        with pytest.raises(ConnectionLost, match="EPROTO: bad frame"):
            await c.ioas_alloc()


async def test_concurrent_requests_are_coalesced_into_few_writes(fake: FakeDaemon) -> None:
    fake.results["ioas_alloc"] = {"ioas_id": 1}
    async with IopfClient.open(fake.path) as c:
        before = c.stats().writes
        async with trio.open_nursery() as n:
            for _ in range(64):
                n.start_soon(c.ioas_alloc)
        st = c.stats()
    assert st.requests == 65 and st.replies == 65
    assert st.writes - before <= 4


async def test_cancelled_call_drops_its_late_reply_and_the_client_keeps_working(
    fake: FakeDaemon,
) -> None:
    release = trio.Event()

    @fake.on("dma")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        await release.wait()
        return {"status": "ok", "faults": 0, "bytes": 4096}

    fake.results["ioas_alloc"] = {"ioas_id": 5}
    async with IopfClient.open(fake.path) as c:
        with trio.move_on_after(0.05):
            await c.dma(1, 0, 4096, Perm.READ)
        release.set()
        assert await c.ioas_alloc() == 5
        await trio.sleep(0.02)
        assert c.stats().late_replies == 1 and c.stats().in_flight == 0


async def test_destroy_of_a_fault_queue_ends_its_iterator(fake: FakeDaemon) -> None:
    fake.results["fault_alloc"] = {"fault_id": 3}
    async with IopfClient.open(fake.path) as c:
        fid = await c.fault_alloc()
        await c.destroy(fid)
        got = [g async for g in c.fault_queue(fid)]
    assert got == []


async def test_receive_batch_takes_every_buffered_group(fake: FakeDaemon) -> None:
    async with IopfClient.open(fake.path) as c:
        for cookie in range(1, 6):
            await fake.conns[0].fault(2, cookie, [cookie << 12])
        with trio.fail_after(2):
            while c.fault_queue(2).buffered < 5:
                await trio.sleep(0.005)
        batch = await c.fault_queue(2).receive_batch(max_groups=4)
        rest = await c.fault_queue(2).receive_batch()
    assert [g.cookie for g in batch] == [1, 2, 3, 4] and [g.cookie for g in rest] == [5]


async def test_trace_records_carry_fields_and_count_client_side_drops(fake: FakeDaemon) -> None:
    fake.results["subscribe"] = {"topics": ["fault", "response"]}
    async with IopfClient.open(fake.path, trace_buffer=2) as c:
        stream = await c.subscribe(["fault", "response"])
        conn = fake.conns[0]
        for i in range(4):
            await conn.event("trace", topic="fault", t=1.0 + i, cookie=i, lost=0)
        with trio.fail_after(2):
            while c.stats().events < 4:
                await trio.sleep(0.005)
        a = await stream.__anext__()
        b = await stream.__anext__()
        await conn.event("trace", topic="response", t=9.0, cookie=9, lost=1)
        d = await stream.__anext__()
    assert fake.conns[0].requests[1]["topics"] == ["fault", "response"]
    assert (a.fields["cookie"], b.fields["cookie"]) == (0, 1)
    assert d.topic == "response" and d.lost == 1 + 2 and stream.dropped == 2


async def test_socket_path_comes_from_argument_then_env_then_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IOPFD_SOCKET", "/tmp/env.sock")
    assert resolve_socket_path("/tmp/arg.sock") == "/tmp/arg.sock"
    assert resolve_socket_path() == "/tmp/env.sock"
    monkeypatch.delenv("IOPFD_SOCKET")
    assert resolve_socket_path() == "/run/iopfd/iopfd.sock"


async def test_open_uses_iopfd_socket_env(
    fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOPFD_SOCKET", fake.path)
    async with IopfClient.open() as c:
        assert c.hello_info is not None
    assert os.path.exists(fake.path)


async def test_submitted_requests_leave_in_submission_order_in_one_write(
    fake: FakeDaemon,
) -> None:
    fake.results["page_response"] = {"done": 0}
    async with IopfClient.open(fake.path) as c:
        conn = fake.conns[0]
        chunks = conn.chunks
        pending = [
            c.submit("ioas_map", ioas_id=1, iova=i << 12, length=4096, perm=3) for i in range(5)
        ]
        pending.append(c.submit("page_response", fault_id=2, responses=[]))
        for p in pending:
            await p.result()
        assert conn.chunks == chunks + 1
    got = [(r["op"], r.get("iova")) for r in fake.conns[0].requests[1:]]
    assert got == [("ioas_map", i << 12) for i in range(5)] + [("page_response", None)]


async def test_a_burst_larger_than_the_socket_buffer_arrives_whole_and_in_order(
    fake: FakeDaemon,
) -> None:
    # hwpt_alloc's ``data`` is the one argument without a size limit of its own
    @fake.on("hwpt_alloc")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        return {"hwpt_id": req["pt_id"]}

    async with IopfClient.open(fake.path) as c:
        pending = [
            c.submit("hwpt_alloc", dev_id=1, pt_id=i, data={"pad": "x" * 100_000})
            for i in range(120)
        ]
        with trio.fail_after(20):
            got = [(await p.result())["hwpt_id"] for p in pending]
    assert got == list(range(120))
    assert [r["pt_id"] for r in fake.conns[0].requests[1:]] == list(range(120))


async def test_iopfctl_prints_the_errno_name_and_exits_1_for_a_non_admin_peer(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    from iopfd.cli.iopfctl import main as iopfctl

    @fake.on("status")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        raise FakeErr("EPERM", "admin operations need root, the daemon's uid or its group")

    rc = await trio.to_thread.run_sync(iopfctl, ["--socket", fake.path, "status"])
    assert rc == 1
    assert capsys.readouterr().err == (
        "iopfctl: EPERM: admin operations need root, the daemon's uid or its group\n"
    )


async def test_a_submitted_request_is_sent_even_before_anyone_awaits_it(
    fake: FakeDaemon,
) -> None:
    got = trio.Event()

    @fake.on("ioas_alloc")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        got.set()
        return {"ioas_id": 4}

    async with IopfClient.open(fake.path) as c:
        pending = c.submit("ioas_alloc")
        with trio.fail_after(2):
            await got.wait()  # the daemon saw it while nobody awaited the handle
        assert await pending.result() == {"ioas_id": 4}


async def test_sync_client_raises_version_mismatch_from_hello(fake: FakeDaemon) -> None:
    from clients import VersionMismatch
    from clients.sync import SyncClient

    @fake.on("hello")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        raise FakeErr("EPROTONOSUPPORT", "supported versions: [2]")

    def connect() -> None:
        SyncClient(fake.path)

    with pytest.raises(VersionMismatch, match=r"supported versions: \[2\]"):
        await trio.to_thread.run_sync(connect)


async def test_sync_client_queues_events_that_arrive_while_it_waits_for_a_reply(
    fake: FakeDaemon,
) -> None:
    from clients.sync import SyncClient

    @fake.on("ioas_alloc")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        await conn.fault(3, 1, [0x1000, 0x2000])
        await conn.event("trace", topic="response", t=1.0, cookie=1)
        await conn.fault(3, 2, [0x3000], seq=conn.seq + 2)  # one event lost
        return {"ioas_id": 11}

    def script() -> tuple[Any, ...]:
        with SyncClient(fake.path, timeout=5) as c:
            ioas = c.ioas_alloc()
            g1, g2 = c.next_fault(timeout=1), c.next_fault(timeout=1)
            rec = c.next_trace(timeout=1)
            none = c.next_fault(timeout=0.05)
            return ioas, g1, g2, rec, none, c.seq_gaps

    ioas, g1, g2, rec, none, gaps = await trio.to_thread.run_sync(script)
    assert ioas == 11 and none is None
    assert (g1.cookie, g1.addresses, g2.cookie) == (1, [0x1000, 0x2000], 2)
    assert rec.topic == "response" and rec.fields["cookie"] == 1
    assert [(g.expected, g.got) for g in gaps] == [(3, 4)]


def _fault_fd(fake: FakeDaemon, pending: dict[int, set[int]]) -> list[dict[str, Any]]:
    """Make the fake's page_response the kernel fault fd's write(): entries in order,
    stop at the first whose code is not 0/1 or whose cookie is not pending; EINVAL when
    that is the first; ENOENT for an unknown queue. Returns the requests it saw."""
    seen: list[dict[str, Any]] = []

    @fake.on("page_response")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        seen.append(req)
        queue = pending.get(req["fault_id"])
        if queue is None:
            raise FakeErr("ENOENT", "no such fault queue")
        done = 0
        for r in req["responses"]:
            if r["code"] not in (0, 1) or r["cookie"] not in queue:
                break
            queue.discard(r["cookie"])
            done += 1
        if done == 0 and req["responses"]:
            raise FakeErr("EINVAL", "entry 0 refused")
        return {"done": done}

    return seen


def test_partial_outcomes_settle_the_applied_prefix_and_the_refused_entry() -> None:
    from clients.records import partial_outcomes

    assert partial_outcomes(4, 4) == ([None] * 4, 4)
    assert partial_outcomes(4, 2) == ([None, None, "EINVAL"], 3)
    assert partial_outcomes(4, 0) == (["EINVAL"], 1)
    assert partial_outcomes(0, 0) == ([], 0)
    # A daemon answering out of range cannot make the caller loop or skip entries.
    assert partial_outcomes(2, 9) == ([None, None], 2)
    assert partial_outcomes(2, -1) == (["EINVAL"], 1)


async def test_page_response_returns_done_and_raises_einval_for_a_bad_first_entry(
    fake: FakeDaemon,
) -> None:
    _fault_fd(fake, {9: {1, 2}})
    async with IopfClient.open(fake.path) as c:
        assert await c.page_response(9, [(1, 0), (5, 0), (2, 0)]) == 1
        with pytest.raises(InvalidArgument):
            await c.page_response(9, [(5, 0), (2, 0)])
        assert await c.page_response(9, []) == 0
        with pytest.raises(NoSuchObject):
            await c.page_response(8, [(2, 0)])


async def test_page_response_each_resends_what_follows_a_refused_entry(
    fake: FakeDaemon,
) -> None:
    seen = _fault_fd(fake, {9: {1, 2, 4, 5, 7}})
    async with IopfClient.open(fake.path) as c:
        got = await c.page_response_each(
            9, [(1, 0), (2, 1), (3, 0), (4, 0), (5, 7), (5, 0), (6, 0), (6, 0), (7, 1)]
        )
    assert got == [None, None, "EINVAL", None, "EINVAL", None, "EINVAL", "EINVAL", None]
    assert [[r["cookie"] for r in req["responses"]] for req in seen] == [
        [1, 2, 3, 4, 5, 5, 6, 6, 7],  # done 2: entry 2 (cookie 3) refused
        [4, 5, 5, 6, 6, 7],  # done 1: entry 1 (code 7) refused
        [5, 6, 6, 7],  # done 1: cookie 6 refused
        [6, 7],  # EINVAL: the first is refused
        [7],  # done 1
    ]


async def test_page_response_each_gives_every_entry_the_queues_error(
    fake: FakeDaemon,
) -> None:
    seen = _fault_fd(fake, {})
    async with IopfClient.open(fake.path) as c:
        assert await c.page_response_each(4, [(1, 0), (2, 0)]) == ["ENOENT", "ENOENT"]
        assert await c.page_response_each(4, []) == []
    assert len(seen) == 1


async def test_answer_raises_for_a_refused_group_and_returns_for_an_applied_one(
    fake: FakeDaemon,
) -> None:
    _fault_fd(fake, {5: {1}})
    async with IopfClient.open(fake.path) as c:
        await fake.conns[0].fault(5, 1, [0x1000])
        g = await c.fault_queue(5).receive()
        await c.answer(g, ResponseCode.SUCCESS)
        with pytest.raises(InvalidArgument) as ei:
            await c.answer(g, ResponseCode.SUCCESS)  # answered already
    assert ei.value.op == "page_response" and "cookie 1" in str(ei.value)


async def test_answer_all_sends_one_page_response_per_queue_and_keeps_input_order(
    fake: FakeDaemon,
) -> None:
    _fault_fd(fake, {5: {1, 3}, 6: set()})

    async with IopfClient.open(fake.path) as c:
        conn = fake.conns[0]
        for fid, cookie in ((5, 1), (6, 2), (5, 3)):
            await conn.fault(fid, cookie, [cookie << 12])
        groups = [
            await c.fault_queue(5).receive(),
            await c.fault_queue(6).receive(),
            await c.fault_queue(5).receive(),
        ]
        results = await c.answer_all(
            [
                (groups[1], ResponseCode.INVALID),
                (groups[0], ResponseCode.SUCCESS),
                (groups[2], ResponseCode.SUCCESS),
            ]
        )
    assert results == ["EINVAL", None, None]
    sent = [
        (r["fault_id"], r["responses"])
        for r in fake.conns[0].requests
        if r["op"] == "page_response"
    ]
    assert sorted(sent) == [
        (5, [{"cookie": 1, "code": 0}, {"cookie": 3, "code": 0}]),
        (6, [{"cookie": 2, "code": 1}]),
    ]


async def test_answer_all_answers_every_group_behind_a_refused_one(fake: FakeDaemon) -> None:
    _fault_fd(fake, {5: {1, 3, 4}})
    async with IopfClient.open(fake.path) as c:
        conn = fake.conns[0]
        for cookie in (1, 2, 3, 4):
            await conn.fault(5, cookie, [cookie << 12])
        groups = [await c.fault_queue(5).receive() for _ in range(4)]
        results = await c.answer_all([(g, ResponseCode.SUCCESS) for g in groups])
    assert results == [None, "EINVAL", None, None]
    sent = [
        [r["cookie"] for r in req["responses"]]
        for req in fake.conns[0].requests
        if req["op"] == "page_response"
    ]
    assert sent == [[1, 2, 3, 4], [3, 4]]


async def test_sync_client_settles_each_entry_of_a_partial_page_response(
    fake: FakeDaemon,
) -> None:
    from clients.sync import SyncClient

    seen = _fault_fd(fake, {5: {1, 3}})

    def script() -> tuple[Any, ...]:
        with SyncClient(fake.path, timeout=5) as c:
            each = c.page_response_each(5, [(1, 0), (2, 0), (3, 1)])
            done = c.page_response(5, [])
            try:
                c.page_response(5, [(1, 0)])
            except InvalidArgument as e:
                refused = e.errno
            return each, done, refused

    each, done, refused = await trio.to_thread.run_sync(script)
    assert (each, done, refused) == ([None, "EINVAL", None], 0, "EINVAL")
    assert [[r["cookie"] for r in req["responses"]] for req in seen] == [[1, 2, 3], [3], [], [1]]


async def test_device_requests_are_buffered_until_read_and_carry_dev_id_and_rid(
    fake: FakeDaemon,
) -> None:
    async with IopfClient.open(fake.path) as c:
        conn = fake.conns[0]
        await conn.event("device_request", dev_id=7, rid="0000:5a:00.0")
        await conn.event("device_request", seq=conn.seq + 2, dev_id=8, rid="0000:5b:00.0")
        stream = c.device_requests()
        first = await stream.__anext__()
        with pytest.raises(EventGap):
            await stream.__anext__()
        second = await stream.__anext__()
        assert stream.receive_nowait() is None
    assert (first.dev_id, first.rid, first.seq) == (7, "0000:5a:00.0", 1)
    assert (second.dev_id, second.rid) == (8, "0000:5b:00.0") and second.received_ns > 0
    assert c.unknown_events == 0


async def test_sync_client_takes_device_requests_and_unplug_reports_forced(
    fake: FakeDaemon,
) -> None:
    from clients.sync import SyncClient

    @fake.on("unplug")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        await conn.event("device_request", dev_id=3, rid=req["rid"])
        return {"forced": req["force"]}

    def script() -> tuple[Any, ...]:
        with SyncClient(fake.path, timeout=5) as c:
            forced = c.unplug("0000:5a:00.0", force=True, grace_s=1)
            req = c.next_device_request(timeout=1)
            none = c.next_device_request(timeout=0.05)
            return forced, req, none, c.hello_info.kernel

    forced, req, none, kernel = await trio.to_thread.run_sync(script)
    assert forced is True and none is None and kernel == "6.18"
    assert (req.dev_id, req.rid) == (3, "0000:5a:00.0")
    sent = [r for r in fake.conns[0].requests if r["op"] == "unplug"][0]
    assert (sent["force"], sent["grace_s"]) == (True, 1.0)


def test_hello_info_knows_what_each_kernel_profile_allows() -> None:
    from clients.records import HelloInfo

    old = HelloInfo.from_wire({"version": 2, "kernel": "6.12"}, 1 << 20)
    new = HelloInfo.from_wire({"version": 2, "kernel": "6.18"}, 1 << 20)
    unknown = HelloInfo.from_wire({"version": 2}, 1 << 20)
    assert (old.pasid_attach, old.paging_fault_hwpt) == (False, False)
    assert (new.pasid_attach, new.paging_fault_hwpt) == (True, True)
    assert (unknown.pasid_attach, unknown.paging_fault_hwpt) == (True, True)
    assert old.max_frame == 1 << 20


async def test_vmm_serve_reports_a_refused_answer_and_still_answers_the_groups_behind_it(
    fake: FakeDaemon,
) -> None:
    from clients.records import FaultRecord
    from clients.vmm.paging import DemandPagingVmm, VmmOptions
    from clients.vmm.report import Progress
    from clients.vmm.workload import GUEST_RAM_BASE

    seen = _fault_fd(fake, {9: {1, 3}})  # cookie 2 is not pending: it is refused
    async with IopfClient.open(fake.path) as c:
        vmm = DemandPagingVmm(c, VmmOptions(), Progress(enabled=False))
        vmm.fault_id, vmm.ioas, vmm.guest_pages = 9, 4, 16
        groups = [
            FaultGroup(
                9, cookie, (FaultRecord(2, 1, 0, 0, Perm.READ, GUEST_RAM_BASE + cookie * 4096, 0),)
            )
            for cookie in (1, 2, 3)
        ]
        await vmm.serve(groups)
    assert [[r["cookie"] for r in req["responses"]] for req in seen] == [[1, 2, 3], [3]]
    assert vmm.stats.violations == ["page_response cookie 2: EINVAL"]
    assert vmm.stats.answers["SUCCESS"] == 3 and vmm.stats.pages_mapped == 3


async def test_both_clients_refuse_arguments_the_daemon_would_refuse_before_sending(
    fake: FakeDaemon,
) -> None:
    from clients.sync import SyncClient

    async with IopfClient.open(fake.path) as c:
        with pytest.raises(InvalidArgument, match="aligned") as ei:
            await c.ioas_map(1, 0x1001, 4096)
        assert ei.value.op == "ioas_map"
        with pytest.raises(InvalidArgument):
            c.submit("no_such_op")

    def script() -> str:
        with SyncClient(fake.path, timeout=5) as c:
            try:
                c.dma(1, 0, 0, Perm.READ)
            except InvalidArgument as e:
                return e.errno
        return "sent"

    assert await trio.to_thread.run_sync(script) == "EINVAL"
    assert [conn.ops() for conn in fake.conns] == [["hello"], ["hello"]]


async def test_a_result_that_does_not_fit_its_model_raises_eproto_and_the_client_goes_on(
    fake: FakeDaemon,
) -> None:
    from clients import ProtocolViolation

    fake.results["bind"] = {"dev_id": -1}
    fake.results["ioas_alloc"] = {"ioas_id": 3}
    async with IopfClient.open(fake.path) as c:
        with pytest.raises(ProtocolViolation, match="dev_id"):
            await c.bind("0000:3a:00.0")
        with pytest.raises(ProtocolViolation):
            await c.request("bind", rid="0000:3a:00.0")
        assert await c.ioas_alloc() == 3


async def test_sync_client_submit_sends_a_batch_in_call_order_in_one_write(
    fake: FakeDaemon,
) -> None:
    from clients.sync import SyncClient

    fake.results["page_response"] = {"done": 0}

    def script() -> tuple[int, int]:
        with SyncClient(fake.path, timeout=5) as c:
            before = c.stats().writes
            maps = [
                c.submit("ioas_map", ioas_id=1, iova=i << 12, length=4096, perm=3) for i in range(5)
            ]
            resp = c.submit("page_response", fault_id=2, responses=[])
            for i, m in enumerate(maps):
                assert m.result() == {"iova": i << 12}
            return resp.result()["done"], c.stats().writes - before

    done, writes = await trio.to_thread.run_sync(script)
    assert (done, writes) == (0, 1)
    got = [(r["op"], r.get("iova")) for r in fake.conns[0].requests[1:]]
    assert got == [("ioas_map", i << 12) for i in range(5)] + [("page_response", None)]


async def test_sync_client_drops_the_late_reply_of_a_timed_out_call_and_goes_on(
    fake: FakeDaemon,
) -> None:
    from clients.sync import SyncClient

    @fake.on("ioas_alloc")
    async def _(conn: FakeConn, req: dict[str, Any]) -> Any:
        await trio.sleep(0.3)
        return {"ioas_id": 5}

    fake.results["fault_alloc"] = {"fault_id": 6}

    def script() -> tuple[Any, ...]:
        with SyncClient(fake.path, timeout=5) as c:
            rid = c.send("ioas_alloc")
            try:
                c.wait(rid, timeout=0.05)
            except TimeoutError:
                timed_out = True
            fid = c.fault_alloc()
            c.next_fault(timeout=0.6)  # reads, and drops, the late ioas_alloc reply
            st = c.stats()
            return timed_out, fid, st.late_replies, st.in_flight, st.requests

    timed_out, fid, late, in_flight, requests = await trio.to_thread.run_sync(script)
    assert (timed_out, fid, late, in_flight, requests) == (True, 6, 1, 0, 3)
