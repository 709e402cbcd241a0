"""Admin ops over the wire, and who may use them."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from iopfd_flows import ACCEL0, ACCEL1, IOVA, LAST_PAGE, READ, fault_event, fault_path
from iopfd_harness import DaemonProc, finish, start_daemon
from iopfd_rawclient import RawClient, frame


def test_status_reports_version_uptime_clients_and_the_protocol_counters(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        st = c.call("status")
    assert st["version"] == 2 and st["uptime_s"] >= 0 and st["clients"] >= 1
    assert st["kernel"] == "6.18"
    for name in (
        "page_requests",
        "groups",
        "delivered",
        "responses",
        "auto_responses",
        "throttled",
        "prq_overflows",
        "invalidations",
    ):
        assert isinstance(st["counters"][name], int)


def test_topology_and_objects_show_owners(iopfd: DaemonProc) -> None:
    with iopfd.client(client="owner") as c:
        p = fault_path(c)
        topo = c.call("topology")
        assert {u["name"] for u in topo["iommus"]} == {"dmar0", "dmar1"}
        row = next(d for d in topo["devices"] if d["rid"] == ACCEL0)
        assert row["state"] == "bound" and row["owner"].startswith("owner#")
        objs = {
            o["id"]: o for o in c.call("objects")["objects"] if o["client"].startswith("owner#")
        }
        assert {objs[p.dev_id]["type"], objs[p.ioas_id]["type"], objs[p.fault_id]["type"]} == {
            "device",
            "ioas",
            "fault",
        }
        assert objs[p.hwpt_id]["fault_id"] == p.fault_id


def test_pending_lists_unanswered_groups_with_their_fields(iopfd: DaemonProc) -> None:
    with iopfd.client(client="vmm") as c:
        p = fault_path(c)
        dma_id = c.start("dma", dev_id=p.dev_id, iova=IOVA, length=4096, perm=READ)
        ev = fault_event(c)
        rows = [r for r in c.call("pending")["pending"] if r["fault_id"] == p.fault_id]
        assert len(rows) == 1
        row = rows[0]
        assert {"fault_id", "cookie", "rid", "pasid", "age_s"} <= row.keys()
        assert (row["cookie"], row["rid"]) == (ev["cookie"], ACCEL0)
        c.call(
            "page_response", fault_id=p.fault_id, responses=[{"cookie": ev["cookie"], "code": 1}]
        )
        assert c.wait_reply(dma_id)["result"]["status"] == "invalid"
        assert not [r for r in c.call("pending")["pending"] if r["fault_id"] == p.fault_id]


def test_inject_writes_a_page_request_that_reaches_the_fault_queue(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        p = fault_path(c)
        before = c.call("status")["counters"]["page_requests"]
        c.call("inject", rid=ACCEL0, addr=0x4000_0000, perm=READ, grpid=5, last=True)
        ev = fault_event(c)
        rec = ev["faults"][-1]
        assert (rec["grpid"], rec["addr"], rec["dev_id"]) == (5, 0x4000_0000, p.dev_id)
        assert rec["flags"] & LAST_PAGE
        assert c.call("status")["counters"]["page_requests"] == before + 1
        c.call(
            "page_response", fault_id=p.fault_id, responses=[{"cookie": ev["cookie"], "code": 0}]
        )
        assert (
            c.error("inject", rid="0000:ee:00.0", addr=0, perm=READ, grpid=1, last=True) == "ENOENT"
        )


def test_forced_unplug_answers_pending_groups_and_plug_brings_the_device_back(
    iopfd: DaemonProc,
) -> None:
    """``force``: removed at once, as version 1's unplug (the owner is not asked)."""
    with iopfd.client() as c:
        p = fault_path(c, ACCEL1)
        dma_id = c.start("dma", dev_id=p.dev_id, iova=IOVA, length=4096, perm=READ)
        fault_event(c)
        auto = c.call("status")["counters"]["auto_responses"]
        assert c.call("unplug", rid=ACCEL1, force=True) == {"forced": True}
        # The driver stops DMA first: the transfer in flight ends "removed", and the
        # drain still answers the group it had sent (INVALID, by the daemon).
        assert c.wait_reply(dma_id)["result"]["status"] == "removed"
        assert c.call("status")["counters"]["auto_responses"] == auto + 1
        assert not [r for r in c.call("pending")["pending"] if r["fault_id"] == p.fault_id]
        states = {d["rid"]: d["state"] for d in c.call("devices")["devices"]}
        assert states[ACCEL1] == "removed"
        with iopfd.client() as other:
            assert other.error("bind", rid=ACCEL1) == "ENODEV"
        assert not [e for e in c.events if e["event"] == "device_request"]
        assert c.error("unplug", rid=ACCEL1) == "EINVAL"
        assert c.error("dma", dev_id=p.dev_id, iova=IOVA, length=4096, perm=READ) == "ENODEV"
        c.call("unbind", dev_id=p.dev_id)
        c.call("plug", rid=ACCEL1)
        assert c.error("plug", rid=ACCEL1) == "EINVAL"
        assert c.error("unplug", rid="0000:ee:00.0") == "ENOENT"
        c.call("reset", rid=ACCEL1)
        states = {d["rid"]: d["state"] for d in c.call("devices")["devices"]}
        assert states[ACCEL1] == "free"


def test_subscribe_streams_trace_records_of_the_chosen_topics(iopfd: DaemonProc) -> None:
    with iopfd.client(client="tracer") as t, iopfd.client() as c:
        assert t.error("subscribe", topics=["fault", "bogus"]) == "EINVAL"
        assert t.call("subscribe", topics=["fault", "response"])["topics"] == ["fault", "response"]
        p = fault_path(c)
        dma_id = c.start("dma", dev_id=p.dev_id, iova=IOVA, length=4096, perm=READ)
        ev = fault_event(c)
        c.call(
            "page_response", fault_id=p.fault_id, responses=[{"cookie": ev["cookie"], "code": 1}]
        )
        c.wait_reply(dma_id)
        topics = []
        seqs = []
        while "response" not in topics:
            rec = t.wait_event("trace")
            assert isinstance(rec["t"], float)
            topics.append(rec["topic"])
            seqs.append(rec["seq"])
        assert set(topics) <= {"fault", "response"}
        assert "fault" in topics
        assert seqs == list(range(1, len(seqs) + 1))


def test_a_slow_subscriber_loses_records_and_is_told_how_many(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "[limits]\ntrace_buffer = 4\n")
    try:
        t = RawClient(d.socket, client="slow-tracer")
        t.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        t.call("subscribe", topics=[])
        with d.client() as c:
            fault_path(c)
            burst = 3000
            reqs = b"".join(
                frame(
                    {
                        "op": "inject",
                        "id": i,
                        "rid": ACCEL0,
                        "addr": 0x1000 * i,
                        "perm": READ,
                        "grpid": i % 512,
                        "last": True,
                    }
                )
                for i in range(1, burst + 1)
            )
            c.send_raw(reqs)
            for i in range(1, burst + 1):
                c.wait_reply(i, timeout=20)
            c.events.clear()
            lost = d.status()["counters"]["daemon_trace_lost"]
            assert lost > 0
            reported = 0
            last_seq = 0

            def drain() -> None:
                nonlocal reported, last_seq
                while True:
                    try:
                        rec = t.recv_frame(timeout=0.5)
                    except TimeoutError:
                        return
                    assert rec["seq"] == last_seq + 1  # a dropped record takes no seq
                    last_seq = rec["seq"]
                    reported += rec.get("lost", 0)

            drain()
            # The count since the last delivered record rides on the next record.
            c.call("inject", rid=ACCEL0, addr=0x100_0000, perm=READ, grpid=1, last=True)
            drain()
            assert reported == lost
        t.close()
    finally:
        finish(d)


def test_throttled_groups_are_answered_and_counted_on_the_next_event(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "[limits]\nmax_pending = 2\n")
    try:
        with d.client() as c:
            p = fault_path(c)
            for grpid in range(1, 5):
                c.call("inject", rid=ACCEL0, addr=0x1000 * grpid, perm=READ, grpid=grpid, last=True)
            first = fault_event(c)
            second = fault_event(c)
            assert "throttled" not in first and "throttled" not in second
            counters = c.call("status")["counters"]
            assert counters["throttled"] == 2
            c.call(
                "page_response",
                fault_id=p.fault_id,
                responses=[{"cookie": first["cookie"], "code": 0}],
            )
            c.call("inject", rid=ACCEL0, addr=0x9000, perm=READ, grpid=9, last=True)
            third = fault_event(c)
            assert third["throttled"] == 2
            assert third["seq"] == second["seq"] + 1
        d.assert_identity_at_rest()
    finally:
        finish(d)


def _nobody_client(path: str) -> dict[str, Any]:
    """Fork a child that drops to uid/gid 65534 and reports what the daemon said."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            c = RawClient(path)
            out = {
                "admin": c.hello_result["admin"] if c.hello_result else None,
                "status": c.request("status")["error"]["code"],
                "inject": c.request("inject", rid=ACCEL0, addr=0, perm=1, grpid=0, last=True)[
                    "error"
                ]["code"],
                "subscribe": c.request("subscribe", topics=[])["error"]["code"],
                "devices": bool(c.call("devices")["devices"]),
            }
            os.write(w, repr(out).encode())
        except BaseException as exc:  # report, never return into pytest in the child
            os.write(w, repr({"error": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    import ast

    result: dict[str, Any] = ast.literal_eval(data.decode())
    return result


def test_a_peer_that_is_not_admin_gets_eperm_for_admin_ops(
    tmp_path: Path, public_dir: Path
) -> None:
    assert os.getuid() == 0, "this test drops privileges from root"
    path = str(public_dir / "iopfd.sock")
    d = start_daemon(tmp_path, 'socket_mode = "0666"\n', socket_path=path)
    try:
        out = _nobody_client(path)
        assert out == {
            "admin": False,
            "status": "EPERM",
            "inject": "EPERM",
            "subscribe": "EPERM",
            "devices": True,
        }, out
        d.assert_identity_at_rest()
    finally:
        finish(d)


def test_a_member_of_the_admin_group_is_admin(tmp_path: Path, public_dir: Path) -> None:
    path = str(public_dir / "iopfd.sock")
    d = start_daemon(tmp_path, 'socket_mode = "0666"\nadmin_group = "4242"\n', socket_path=path)
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([4242])
                os.setgid(65534)
                os.setuid(65534)
                c = RawClient(path)
                ok = c.hello_result is not None and c.hello_result["admin"] is True
                ok = ok and "counters" in c.call("status")
                os.write(w, b"1" if ok else b"0")
            except BaseException:
                os.write(w, b"E")
            finally:
                os._exit(0)
        os.close(w)
        got = os.read(r, 1)
        os.close(r)
        os.waitpid(pid, 0)
        assert got == b"1"
    finally:
        finish(d)


def test_a_pipelined_pending_sees_the_injected_group_before_it(iopfd: DaemonProc) -> None:
    """Requests of one read are serviced as a batch; an op that reports state still
    sees the effect of every request sent before it."""
    with iopfd.client() as c:
        p = fault_path(c)
        c.send_raw(
            frame(
                {
                    "op": "inject",
                    "id": 9001,
                    "rid": ACCEL0,
                    "addr": 0x7000_0000,
                    "perm": READ,
                    "grpid": 7,
                    "last": True,
                }
            )
            + frame({"op": "pending", "id": 9002})
        )
        assert c.wait_reply(9001)["ok"]
        rows = [r for r in c.wait_reply(9002)["result"]["pending"] if r["fault_id"] == p.fault_id]
        assert [(r["grpid"], r["rid"]) for r in rows] == [(7, ACCEL0)]
        ev = fault_event(c)
        c.call(
            "page_response", fault_id=p.fault_id, responses=[{"cookie": ev["cookie"], "code": 0}]
        )
