"""Every VMM op of docs/protocol.md (version 2) over the wire: success and error paths."""

from __future__ import annotations

from pathlib import Path

from iopfd_flows import (
    ACCEL0,
    ACCEL1,
    ATS_NO_PRI,
    IOVA,
    LAST_PAGE,
    LEGACY,
    NEEDS_PASID,
    NIC_VF0,
    PASID_VALID,
    READ,
    WRITE,
    fault_event,
    fault_path,
)
from iopfd_harness import DaemonProc, finish, start_daemon
from iopfd_rawclient import RawClient


def test_devices_lists_every_function_with_the_protocol_fields(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        rows = {d["rid"]: d for d in c.call("devices")["devices"]}
    assert {ACCEL0, NIC_VF0, ATS_NO_PRI, LEGACY} <= rows.keys()
    for row in rows.values():
        assert {"rid", "iommu", "pri", "ats", "pasid_bits", "pf", "state", "removing"} <= row.keys()
        assert row["removing"] is False
    assert rows[ACCEL0]["pri"] is True and rows[ACCEL0]["pf"] is None
    assert rows[NIC_VF0]["pf"] == "0000:3b:00.0"
    assert rows[ATS_NO_PRI]["pri"] is False
    assert rows[ACCEL0]["state"] == "free"


def test_bind_is_exclusive_and_unbind_frees_the_device(iopfd: DaemonProc) -> None:
    with iopfd.client() as a, iopfd.client() as b:
        dev = a.call("bind", rid=ACCEL0)["dev_id"]
        assert b.error("bind", rid=ACCEL0) == "EBUSY"
        states = {d["rid"]: d["state"] for d in b.call("devices")["devices"]}
        assert states[ACCEL0] == "bound"
        assert a.call("unbind", dev_id=dev) == {}
        assert a.error("unbind", dev_id=dev) == "ENOENT"
        b.call("bind", rid=ACCEL0)


def test_bind_of_an_unknown_or_malformed_rid_fails_cleanly(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        assert c.error("bind", rid="0000:ff:1f.7") in {"ENOENT", "ENODEV"}
        assert c.error("bind", rid="not-a-rid") in {"EINVAL", "ENOENT"}


def test_objects_are_private_to_their_connection(iopfd: DaemonProc) -> None:
    with iopfd.client() as a, iopfd.client() as b:
        p = fault_path(a)
        assert b.error("unbind", dev_id=p.dev_id) == "ENOENT"
        assert b.error("ioas_map", ioas_id=p.ioas_id, iova=0, length=4096, perm=READ) == "ENOENT"
        assert (
            b.error("page_response", fault_id=p.fault_id, responses=[{"cookie": 1, "code": 0}])
            == "ENOENT"
        )
        assert b.error("attach", dev_id=p.dev_id, pt_id=p.hwpt_id) == "ENOENT"
        assert b.error("destroy", obj_id=p.fault_id) == "ENOENT"
        assert b.error("destroy", obj_id=p.ioas_id) == "ENOENT"
        assert b.error("dma", dev_id=p.dev_id, iova=0, length=4096, perm=READ) == "ENOENT"
        assert b.error("device_reset", dev_id=p.dev_id) == "ENOENT"
        assert b.error("detach", dev_id=p.dev_id) == "ENOENT"


def test_ioas_map_and_unmap_report_the_bytes_unmapped(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        ioas = c.call("ioas_alloc")["ioas_id"]
        assert c.call("ioas_map", ioas_id=ioas, iova=IOVA, length=0x4000, perm=READ | WRITE) == {
            "iova": IOVA
        }
        assert c.call("ioas_unmap", ioas_id=ioas, iova=IOVA, length=0x2000) == {"unmapped": 0x2000}
        assert c.call("ioas_unmap", ioas_id=ioas, iova=IOVA, length=0x4000) == {"unmapped": 0x2000}
        assert c.error("ioas_map", ioas_id=ioas + 1000, iova=0, length=4096, perm=READ) == "ENOENT"
        assert c.error("ioas_map", ioas_id=ioas, iova=0, length=4096, perm=4) == "EINVAL"


def test_a_fault_is_delivered_answered_and_the_dma_completes(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        p = fault_path(c)
        rid = c.start("dma", dev_id=p.dev_id, iova=IOVA, length=4096, perm=READ)
        ev = fault_event(c)
        assert ev["seq"] == 1 and ev["fault_id"] == p.fault_id and ev["cookie"] >= 1
        assert "throttled" not in ev
        rec = ev["faults"][-1]
        assert set(rec) == {"flags", "dev_id", "pasid", "grpid", "perm", "addr", "length"}
        assert rec["flags"] & LAST_PAGE and not rec["flags"] & PASID_VALID
        assert (rec["dev_id"], rec["addr"], rec["length"]) == (p.dev_id, IOVA, 0)
        assert rec["perm"] & READ
        c.call("ioas_map", ioas_id=p.ioas_id, iova=IOVA, length=4096, perm=READ | WRITE)
        assert c.call(
            "page_response", fault_id=p.fault_id, responses=[{"cookie": ev["cookie"], "code": 0}]
        ) == {"done": 1}
        done = c.wait_reply(rid)["result"]
        assert done["status"] == "ok" and done["bytes"] == 4096 and done["faults"] >= 1


def test_dma_does_not_block_later_requests(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        p = fault_path(c)
        dma_id = c.start("dma", dev_id=p.dev_id, iova=IOVA, length=4096, perm=READ)
        ev = fault_event(c)
        # The dma waits for the answer; a later request is answered first.
        assert c.call("devices")["devices"]
        assert dma_id not in c.replies
        c.call(
            "page_response", fault_id=p.fault_id, responses=[{"cookie": ev["cookie"], "code": 1}]
        )
        assert c.wait_reply(dma_id)["result"]["status"] == "invalid"


def test_duplicate_id_of_a_dma_in_flight_is_einval(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        p = fault_path(c)
        c.start("dma", id=500, dev_id=p.dev_id, iova=IOVA, length=4096, perm=READ)
        ev = fault_event(c)
        assert (
            c.error("dma", id=500, dev_id=p.dev_id, iova=IOVA, length=4096, perm=READ) == "EINVAL"
        )
        c.call(
            "page_response", fault_id=p.fault_id, responses=[{"cookie": ev["cookie"], "code": 1}]
        )
        assert c.wait_reply(500)["result"]["status"] == "invalid"


def test_page_response_is_the_fault_fds_write_and_stops_at_the_first_bad_entry(
    iopfd: DaemonProc,
) -> None:
    """PROTOCOL.md v2 item 1 (iommufd_fault_fops_write): a bad first entry fails the
    request and applies nothing; later, a bad entry stops processing and ``done`` counts
    what was applied before it."""
    with iopfd.client() as c:
        p = fault_path(c)
        dma_id = c.start("dma", dev_id=p.dev_id, iova=IOVA, length=4096, perm=READ)
        cookie = fault_event(c)["cookie"]
        for first_bad in (
            {"cookie": cookie + 1000, "code": 0},  # unknown
            {"cookie": cookie, "code": 7},
        ):  # bad code
            assert (
                c.error(
                    "page_response",
                    fault_id=p.fault_id,
                    responses=[first_bad, {"cookie": cookie, "code": 1}],
                )
                == "EINVAL"
            )
        # Nothing was applied: the group is still pending and the dma still waits.
        assert [
            r["cookie"] for r in c.call("pending")["pending"] if r["fault_id"] == p.fault_id
        ] == [cookie]
        assert dma_id not in c.replies
        done = c.call(
            "page_response",
            fault_id=p.fault_id,
            responses=[
                {"cookie": cookie, "code": 1},  # the answer
                {"cookie": cookie, "code": 1},  # already answered: stops here
                {"cookie": cookie + 1000, "code": 0},  # never looked at
            ],
        )
        assert done == {"done": 1}
        assert c.wait_reply(dma_id)["result"]["status"] == "invalid"
        assert (
            c.error("page_response", fault_id=p.fault_id, responses=[{"cookie": cookie, "code": 0}])
            == "EINVAL"
        )
        assert c.call("page_response", fault_id=p.fault_id, responses=[]) == {"done": 0}


def test_dma_miss_on_a_function_without_pri_is_no_pri(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        dev = c.call("bind", rid=ATS_NO_PRI)["dev_id"]
        ioas = c.call("ioas_alloc")["ioas_id"]
        hwpt = c.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=[])["hwpt_id"]
        c.call("attach", dev_id=dev, pt_id=hwpt)
        c.call("ioas_map", ioas_id=ioas, iova=IOVA, length=4096, perm=READ)
        assert c.call("dma", dev_id=dev, iova=IOVA, length=4096, perm=READ) == {
            "status": "ok",
            "faults": 0,
            "bytes": 4096,
        }
        res = c.call("dma", dev_id=dev, iova=IOVA + 4096, length=4096, perm=READ)
        assert res["status"] == "no_pri" and res["bytes"] == 0


def test_hwpt_alloc_errors_follow_the_kernel(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        dev = c.call("bind", rid=ACCEL0)["dev_id"]
        ioas = c.call("ioas_alloc")["ioas_id"]
        assert (
            c.error("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=["dirty_tracking"]) == "EOPNOTSUPP"
        )
        assert c.error("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=[], fault_id=9999) == "ENOENT"
        assert (
            c.error("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=[], data={"type": "vtd_s1"})
            == "EINVAL"
        )
        assert c.error("hwpt_alloc", dev_id=dev + 999, pt_id=ioas, flags=[]) == "ENOENT"
        # v2 item 10 (iommufd_hwpt_alloc): a pt_id that is no object of this connection.
        assert c.error("hwpt_alloc", dev_id=dev, pt_id=ioas + 999, flags=[]) == "EINVAL"


def _attached(c: RawClient, rid: str) -> dict[str, int]:
    row = next(d for d in c.call("topology")["devices"] if d["rid"] == rid)
    attached: dict[str, int] = row["attached"]
    return attached


def test_attach_replace_detach_rules(iopfd: DaemonProc) -> None:
    """v2 item 10 (VFIO): attach where attached is a replace; detach of nothing succeeds."""
    with iopfd.client() as c:
        p = fault_path(c, flags=["pasid"])
        hwpt2 = c.call(
            "hwpt_alloc", dev_id=p.dev_id, pt_id=p.ioas_id, flags=["pasid"], fault_id=p.fault_id
        )["hwpt_id"]
        assert c.call("attach", dev_id=p.dev_id, pt_id=hwpt2) == {"hwpt_id": hwpt2}
        assert _attached(c, ACCEL0) == {"rid": hwpt2}
        assert c.error("attach", dev_id=p.dev_id, pt_id=p.ioas_id, pasid=3) == "EINVAL"
        assert c.error("replace", dev_id=p.dev_id, pt_id=hwpt2, pasid=3) == "EINVAL"
        c.call("replace", dev_id=p.dev_id, pt_id=p.hwpt_id)
        c.call("attach", dev_id=p.dev_id, pt_id=p.hwpt_id, pasid=3)
        assert _attached(c, ACCEL0) == {"rid": p.hwpt_id, "3": p.hwpt_id}
        c.call("detach", dev_id=p.dev_id, pasid=3)
        c.call("detach", dev_id=p.dev_id)
        assert _attached(c, ACCEL0) == {}
        assert c.call("detach", dev_id=p.dev_id) == {}
        assert c.call("detach", dev_id=p.dev_id, pasid=3) == {}
        assert c.error("detach", dev_id=p.dev_id + 999) == "ENOENT"


def test_fault_capable_attach_needs_pri_and_is_refused_on_a_vf(iopfd: DaemonProc) -> None:
    """v2 item 10: no PRI is ENODEV (intel_iommu_enable_iopf); a VF is EINVAL."""
    with iopfd.client() as c:
        fault = c.call("fault_alloc")["fault_id"]
        ioas = c.call("ioas_alloc")["ioas_id"]
        for rid, code in ((ATS_NO_PRI, "ENODEV"), (LEGACY, "ENODEV"), (NIC_VF0, "EINVAL")):
            dev = c.call("bind", rid=rid)["dev_id"]
            try:
                hwpt = c.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=[], fault_id=fault)[
                    "hwpt_id"
                ]
            except Exception as exc:  # the kernel may refuse at alloc or at attach
                assert getattr(exc, "code", None) == code
                continue
            assert c.error("attach", dev_id=dev, pt_id=hwpt) == code


def test_destroy_refuses_objects_in_use_and_names_its_object_with_obj_id(iopfd: DaemonProc) -> None:
    """v2 item 12: ``obj_id`` names the object; ``id`` is the request's own."""
    with iopfd.client() as c:
        p = fault_path(c)
        assert c.error("destroy", obj_id=p.fault_id) == "EBUSY"
        assert c.error("destroy", obj_id=p.hwpt_id) == "EBUSY"
        assert c.error("destroy", obj_id=p.ioas_id) == "EBUSY"
        c.call("detach", dev_id=p.dev_id)
        assert c.call("destroy", obj_id=p.hwpt_id) == {}
        # v1's form, the request id naming the object, is a missing obj_id now.
        reply = c.request("destroy", id=p.fault_id)
        assert (reply["id"], reply["ok"], reply["error"]["code"]) == (p.fault_id, False, "EINVAL")
        reply = c.request("destroy", id=777, obj_id=p.fault_id)
        assert reply == {"id": 777, "ok": True, "result": {}}
        assert c.error("destroy", obj_id=p.fault_id) == "ENOENT"


def test_nested_translation_faults_then_completes(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        dev = c.call("bind", rid=ACCEL1)["dev_id"]
        ioas = c.call("ioas_alloc")["ioas_id"]
        parent = c.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=["nest_parent"])["hwpt_id"]
        fault = c.call("fault_alloc")["fault_id"]
        # iommufd_hwpt_nested_alloc: no user data is EOPNOTSUPP, as the kernel says.
        assert c.error("hwpt_alloc", dev_id=dev, pt_id=parent, flags=[]) == "EOPNOTSUPP"
        assert (
            c.error(
                "hwpt_alloc",
                dev_id=dev,
                pt_id=parent,
                flags=["nest_parent"],
                data={"type": "vtd_s1"},
            )
            == "EOPNOTSUPP"
        )
        assert (
            c.error("hwpt_alloc", dev_id=dev, pt_id=parent, flags=[], data={"type": "arm_smmuv3"})
            == "EOPNOTSUPP"
        )
        # Attached at a PASID: PASID-compatible (v2 item 2; nested HWPTs take the flag).
        nested = c.call(
            "hwpt_alloc",
            dev_id=dev,
            pt_id=parent,
            flags=["pasid"],
            fault_id=fault,
            data={"type": "vtd_s1"},
        )["hwpt_id"]
        c.call("attach", dev_id=dev, pt_id=nested, pasid=7)
        gpa = 0x800_0000
        c.call("ioas_map", ioas_id=ioas, iova=gpa, length=4096, perm=READ | WRITE)
        dma_id = c.start("dma", dev_id=dev, pasid=7, iova=IOVA, length=4096, perm=READ)
        ev = fault_event(c)
        rec = ev["faults"][-1]
        assert rec["pasid"] == 7 and rec["addr"] == IOVA
        assert rec["flags"] == PASID_VALID | LAST_PAGE | NEEDS_PASID
        c.call("hwpt_s1_map", hwpt_id=nested, iova=IOVA, length=4096, gpa=gpa, perm=READ | WRITE)
        c.call("page_response", fault_id=fault, responses=[{"cookie": ev["cookie"], "code": 0}])
        assert c.wait_reply(dma_id)["result"]["status"] == "ok"
        assert c.call("hwpt_s1_unmap", hwpt_id=nested, iova=IOVA, length=4096) == {"unmapped": 4096}
        assert c.call("hwpt_invalidate", hwpt_id=nested, iova=IOVA, length=4096) == {}
        assert c.call("hwpt_invalidate", hwpt_id=nested) == {}
        assert c.error("hwpt_s1_map", hwpt_id=ioas, iova=0, length=4096, gpa=0, perm=READ) in {
            "EINVAL",
            "ENOENT",
        }


def test_pasid_rules(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        p = fault_path(c)
        assert c.error("attach", dev_id=p.dev_id, pt_id=p.hwpt_id, pasid=1 << 20) == "EINVAL"
        legacy = c.call("bind", rid=LEGACY)["dev_id"]
        ioas = c.call("ioas_alloc")["ioas_id"]
        hwpt = c.call("hwpt_alloc", dev_id=legacy, pt_id=ioas, flags=[])["hwpt_id"]
        assert c.error("attach", dev_id=legacy, pt_id=hwpt, pasid=1) == "EOPNOTSUPP"


def _auto(c: RawClient) -> int:
    return int(c.call("status")["counters"]["auto_responses"])


def test_detach_and_unbind_answer_the_pending_groups_they_orphan(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        p = fault_path(c, flags=["pasid"])
        c.call("attach", dev_id=p.dev_id, pt_id=p.hwpt_id, pasid=9)
        c.call("inject", rid=ACCEL0, addr=0x1000, perm=READ, grpid=1, last=True)
        c.call("inject", rid=ACCEL0, pasid=9, addr=0x2000, perm=READ, grpid=2, last=True)
        fault_event(c)
        fault_event(c)
        before = _auto(c)
        c.call("detach", dev_id=p.dev_id, pasid=9)  # the pasid's group only
        assert _auto(c) == before + 1
        pending = [r for r in c.call("pending")["pending"] if r["fault_id"] == p.fault_id]
        assert [r["pasid"] for r in pending] == [None]
        c.call("unbind", dev_id=p.dev_id)  # the rest
        assert _auto(c) == before + 2
        assert not [r for r in c.call("pending")["pending"] if r["fault_id"] == p.fault_id]


def test_entries_before_a_malformed_one_stay_applied_and_done_counts_them(
    iopfd: DaemonProc,
) -> None:
    """PROTOCOL.md v2 item 1: entries are applied in order up to the first bad one, which
    may hold any integer (negative, huge): that is not a malformed request."""
    with iopfd.client() as c:
        p = fault_path(c)
        c.call("inject", rid=ACCEL0, addr=0x6000_0000, perm=READ, grpid=3, last=True)
        ev = fault_event(c)
        res = c.call(
            "page_response",
            fault_id=p.fault_id,
            responses=[
                {"cookie": ev["cookie"], "code": 0},
                {"cookie": ev["cookie"] + 1000, "code": -1},
                {"cookie": -5, "code": 0},
                {"cookie": 7, "code": 1 << 40},
            ],
        )
        assert res == {"done": 1}
        assert not [r for r in c.call("pending")["pending"] if r["fault_id"] == p.fault_id]
        for bad in (
            {"cookie": -5, "code": 0},
            {"cookie": 2**64 - 1, "code": 1},
            {"cookie": ev["cookie"], "code": -(2**63)},
        ):
            assert c.error("page_response", fault_id=p.fault_id, responses=[bad]) == "EINVAL"


def test_every_daemon_counter_is_reported_from_the_start(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    try:
        with d.client() as c:
            counters = c.call("status")["counters"]
        for name in (
            "connections",
            "connections_refused",
            "protocol_errors",
            "internal_errors",
            "outbuf_overflows",
            "trace_lost",
        ):
            assert f"daemon_{name}" in counters, name
        assert counters["daemon_internal_errors"] == 0
    finally:
        finish(d)
