"""PROTOCOL.md *Version 2*, item by item, on the wire against the real daemon.

Each test names the item it pins. Where the two kernel profiles differ (items 2, 6, 11
and the fault-capable paging HWPT) the test runs on both: ``iopfd`` is a daemon with the
default profile (6.18), ``iopfd_612`` one started with ``--kernel 6.12``. After every
test the fixtures check the exactly-once identity at rest.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from iopfd_flows import (
    ACCEL0,
    ACCEL1,
    ATS_NO_PRI,
    EXEC,
    IOVA,
    LAST_PAGE,
    LEGACY,
    NEEDS_PASID,
    PASID_VALID,
    PRIV,
    READ,
    WRITE,
    fault_event,
    fault_path,
)
from iopfd_harness import DaemonProc, finish, iopfd_command, start_daemon
from iopfd_rawclient import RawClient


def _counters(c: RawClient) -> dict[str, int]:
    counters: dict[str, int] = c.call("status")["counters"]
    return counters


def _delta(before: dict[str, int], after: dict[str, int], *names: str) -> dict[str, int]:
    return {n: after.get(n, 0) - before.get(n, 0) for n in names}


def _pending_cookies(c: RawClient, fault_id: int) -> list[int]:
    return sorted(r["cookie"] for r in c.call("pending")["pending"] if r["fault_id"] == fault_id)


def _device_row(c: RawClient, rid: str) -> dict[str, Any]:
    row: dict[str, Any] = next(d for d in c.call("topology")["devices"] if d["rid"] == rid)
    return row


def _inject(
    c: RawClient,
    rid: str,
    addr: int,
    grpid: int,
    *,
    last: bool = True,
    pasid: int | None = None,
    perm: int = READ,
) -> None:
    args: dict[str, Any] = {"rid": rid, "addr": addr, "perm": perm, "grpid": grpid, "last": last}
    if pasid is not None:
        args["pasid"] = pasid
    c.call("inject", **args)


def _nested_fault_path(c: RawClient, rid: str, flags: list[str]) -> dict[str, int]:
    """A fault-capable nested HWPT (the only kind 6.12 allows), attached at the RID."""
    dev = c.call("bind", rid=rid)["dev_id"]
    ioas = c.call("ioas_alloc")["ioas_id"]
    fault = c.call("fault_alloc")["fault_id"]
    parent = c.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=["nest_parent"])["hwpt_id"]
    nested = c.call(
        "hwpt_alloc", dev_id=dev, pt_id=parent, flags=flags, fault_id=fault, data={"type": "vtd_s1"}
    )["hwpt_id"]
    c.call("attach", dev_id=dev, pt_id=nested)
    return {"dev": dev, "ioas": ioas, "fault": fault, "parent": parent, "nested": nested}


# --- item 1: page_response is the fault fd's write() ----------------------------------


def test_v2_1_page_response_applies_in_order_and_stops_at_the_first_bad_entry(
    iopfd: DaemonProc,
) -> None:
    with iopfd.client() as c:
        p = fault_path(c)
        for grpid in (1, 2, 3):
            _inject(c, ACCEL0, 0x10_0000 * grpid, grpid)
        cookies = [fault_event(c)["cookie"] for _ in range(3)]
        before = _counters(c)
        reply = c.call(
            "page_response",
            fault_id=p.fault_id,
            responses=[
                {"cookie": cookies[0], "code": 0},
                {"cookie": cookies[1], "code": 1},
                {"cookie": cookies[2] + 100, "code": 0},  # not pending: processing stops
                {"cookie": cookies[2], "code": 0},  # never looked at
            ],
        )
        assert reply == {"done": 2}
        assert _pending_cookies(c, p.fault_id) == [cookies[2]]
        assert _delta(before, _counters(c), "responses") == {"responses": 2}
        assert c.call(
            "page_response", fault_id=p.fault_id, responses=[{"cookie": cookies[2], "code": 0}]
        ) == {"done": 1}


def test_v2_1_a_bad_first_entry_is_einval_and_nothing_is_applied(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        p = fault_path(c)
        for grpid in (4, 5):
            _inject(c, ACCEL0, 0x10_0000 * grpid, grpid)
        first, second = (fault_event(c)["cookie"] for _ in range(2))
        before = _counters(c)
        # The code is checked before the cookie is looked up: a bad code on a pending
        # cookie does not consume it.
        for bad in ({"cookie": first, "code": 2}, {"cookie": 0, "code": 0}):
            assert (
                c.error(
                    "page_response",
                    fault_id=p.fault_id,
                    responses=[bad, {"cookie": second, "code": 0}],
                )
                == "EINVAL"
            )
        assert _pending_cookies(c, p.fault_id) == [first, second]
        assert _delta(before, _counters(c), "responses") == {"responses": 0}
        assert c.call(
            "page_response",
            fault_id=p.fault_id,
            responses=[{"cookie": first, "code": 0}, {"cookie": second, "code": 0}],
        ) == {"done": 2}
        assert c.call("page_response", fault_id=p.fault_id, responses=[]) == {"done": 0}
        assert (
            c.error(
                "page_response", fault_id=p.fault_id + 999, responses=[{"cookie": first, "code": 0}]
            )
            == "ENOENT"
        )


# --- item 2: PASID compatibility ---------------------------------------------------------


def test_v2_2_pasid_attach_needs_pasid_compatible_hwpts_on_6_18(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        dev = c.call("bind", rid=ACCEL0)["dev_id"]
        ioas = c.call("ioas_alloc")["ioas_id"]
        plain = c.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=[])["hwpt_id"]
        compat = c.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=["pasid"])["hwpt_id"]
        # A PASID takes only a HWPT allocated with the flag.
        assert c.error("attach", dev_id=dev, pt_id=plain, pasid=1) == "EINVAL"
        # ... and not while the RID holds one without it.
        c.call("attach", dev_id=dev, pt_id=plain)
        assert c.error("attach", dev_id=dev, pt_id=compat, pasid=1) == "EINVAL"
        c.call("attach", dev_id=dev, pt_id=compat)  # RID: a replace (item 10)
        c.call("attach", dev_id=dev, pt_id=compat, pasid=1)
        # While a PASID is attached the RID cannot take a HWPT without the flag.
        assert c.error("attach", dev_id=dev, pt_id=plain) == "EINVAL"
        assert c.error("replace", dev_id=dev, pt_id=plain) == "EINVAL"
        assert c.error("replace", dev_id=dev, pt_id=plain, pasid=1) == "EINVAL"
        assert _device_row(c, ACCEL0)["attached"] == {"rid": compat, "1": compat}
        # Nested HWPTs take the flag too.
        parent = c.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=["nest_parent"])["hwpt_id"]
        nested = c.call(
            "hwpt_alloc", dev_id=dev, pt_id=parent, flags=["pasid"], data={"type": "vtd_s1"}
        )["hwpt_id"]
        c.call("attach", dev_id=dev, pt_id=nested, pasid=2)
        assert (
            c.error("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=["dirty_tracking"]) == "EOPNOTSUPP"
        )


def test_v2_2_on_6_12_the_pasid_flag_is_unknown_and_pasid_attach_does_not_exist(
    iopfd_612: DaemonProc,
) -> None:
    with iopfd_612.client() as c:
        dev = c.call("bind", rid=ACCEL0)["dev_id"]
        ioas = c.call("ioas_alloc")["ioas_id"]
        assert c.error("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=["pasid"]) == "EOPNOTSUPP"
        plain = c.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=[])["hwpt_id"]
        c.call("attach", dev_id=dev, pt_id=plain)
        # v6.12's VFIO_DEVICE_ATTACH_IOMMUFD_PT takes no PASID flag.
        assert c.error("attach", dev_id=dev, pt_id=plain, pasid=1) == "EINVAL"
        assert _device_row(c, ACCEL0)["attached"] == {"rid": plain}


# --- item 3: record flags carry NEEDS_PASID ---------------------------------------------


def test_v2_3_pasid_records_carry_flags_5_then_7_and_rid_records_0_then_2(
    iopfd: DaemonProc,
) -> None:
    with iopfd.client() as c:
        p = fault_path(c, pasid=6)
        c.call("attach", dev_id=p.dev_id, pt_id=p.hwpt_id)  # the RID too
        _inject(c, ACCEL0, 0x1000, 9, last=False, pasid=6)
        _inject(c, ACCEL0, 0x2000, 9, last=True, pasid=6)
        ev = fault_event(c)
        assert [(r["flags"], r["pasid"], r["addr"]) for r in ev["faults"]] == [
            (PASID_VALID | NEEDS_PASID, 6, 0x1000),
            (PASID_VALID | NEEDS_PASID | LAST_PAGE, 6, 0x2000),
        ]
        _inject(c, ACCEL0, 0x3000, 10, last=False)
        _inject(c, ACCEL0, 0x4000, 10, last=True)
        rid_ev = fault_event(c)
        assert [r["flags"] for r in rid_ev["faults"]] == [0, LAST_PAGE]
        assert c.call(
            "page_response",
            fault_id=p.fault_id,
            responses=[
                {"cookie": ev["cookie"], "code": 0},
                {"cookie": rid_ev["cookie"], "code": 0},
            ],
        ) == {"done": 2}


# --- item 4: no handler, per request ------------------------------------------------------


def test_v2_4_a_request_without_a_fault_capable_attachment_is_answered_on_arrival(
    iopfd: DaemonProc,
) -> None:
    with iopfd.client() as c:
        # The RID is fault-capable; PASID 3 translates (its PASID entry is present, so
        # the IOMMU queues the request) through a HWPT without a fault queue.
        p = fault_path(c, flags=["pasid"])
        plain = c.call("hwpt_alloc", dev_id=p.dev_id, pt_id=p.ioas_id, flags=["pasid"])["hwpt_id"]
        c.call("attach", dev_id=p.dev_id, pt_id=plain, pasid=3)
        before = _counters(c)
        _inject(c, ACCEL0, 0x5000, 11, last=False, pasid=3)  # not the group's last
        after = _counters(c)
        assert _delta(
            before,
            after,
            "page_requests",
            "groups",
            "auto_responses",
            "no_handler_responses",
            "hw_auto_responses",
        ) == {
            "page_requests": 1,
            "groups": 1,
            "auto_responses": 1,
            "no_handler_responses": 1,
            "hw_auto_responses": 0,
        }
        assert _device_row(c, ACCEL0)["partials"] == 0  # never set aside
        # Nothing was delivered for it: the next event is the RID's group.
        _inject(c, ACCEL0, 0x6000, 12)
        ev = fault_event(c)
        assert [(r["grpid"], r["addr"]) for r in ev["faults"]] == [(12, 0x6000)]
        c.call(
            "page_response", fault_id=p.fault_id, responses=[{"cookie": ev["cookie"], "code": 0}]
        )


# --- item 5: partials freed with the last fault-capable attachment ------------------------


def test_v2_5_partials_are_freed_when_the_last_fault_capable_attachment_goes(
    iopfd: DaemonProc,
) -> None:
    with iopfd.client() as c:
        p = fault_path(c)
        _inject(c, ACCEL0, 0x7000, 13, last=False)
        assert _device_row(c, ACCEL0)["partials"] == 1
        c.call("detach", dev_id=p.dev_id)
        assert _device_row(c, ACCEL0)["partials"] == 0
        c.call("attach", dev_id=p.dev_id, pt_id=p.hwpt_id)
        _inject(c, ACCEL0, 0x8000, 13, last=True)
        ev = fault_event(c)
        assert [r["addr"] for r in ev["faults"]] == [0x8000]  # the old partial is gone
        c.call(
            "page_response", fault_id=p.fault_id, responses=[{"cookie": ev["cookie"], "code": 0}]
        )


# --- item 6: PRI at probe (6.18) or with the first fault-capable attachment (6.12) --------


def _dma_miss_without_fault_queue(c: RawClient) -> dict[str, Any]:
    dev = c.call("bind", rid=ACCEL0)["dev_id"]
    ioas = c.call("ioas_alloc")["ioas_id"]
    hwpt = c.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=[])["hwpt_id"]
    c.call("attach", dev_id=dev, pt_id=hwpt)
    return c.call("dma", dev_id=dev, iova=IOVA, length=4096, perm=READ)


def test_v2_6_on_6_18_pri_is_on_from_probe_and_a_miss_without_fault_queue_is_invalid(
    iopfd: DaemonProc,
) -> None:
    with iopfd.client() as c:
        assert _device_row(c, ACCEL0)["pri_enabled"] is True  # free, never attached
        before = _counters(c)
        res = _dma_miss_without_fault_queue(c)
        assert res["status"] == "invalid" and res["faults"] >= 1 and res["bytes"] == 0
        assert _delta(before, _counters(c), "no_handler_responses")["no_handler_responses"] >= 1


def test_v2_6_on_6_12_pri_follows_fault_capable_attachments_and_the_miss_is_no_pri(
    iopfd_612: DaemonProc,
) -> None:
    with iopfd_612.client() as c:
        assert _device_row(c, ACCEL0)["pri_enabled"] is False
        res = _dma_miss_without_fault_queue(c)
        assert (res["status"], res["faults"], res["bytes"]) == ("no_pri", 0, 0)


# --- item 7: bad requests -------------------------------------------------------------------


def test_v2_7_a_bad_non_last_request_is_dropped_and_a_bad_last_one_answered_invalid(
    iopfd: DaemonProc,
) -> None:
    with iopfd.client() as c:
        p = fault_path(c)
        before = _counters(c)
        _inject(c, ACCEL0, 0x9000, 14, last=False, perm=PRIV | READ)  # privileged
        _inject(c, ACCEL0, 1 << 47, 14, last=False)  # not canonical
        _inject(c, ACCEL0, 0xA000, 14, last=False)
        _inject(c, ACCEL0, 0xB000, 14, last=True)
        ev = fault_event(c)
        assert [r["addr"] for r in ev["faults"]] == [0xA000, 0xB000]  # the rest delivered
        _inject(c, ACCEL0, 0xC000, 15, last=True, perm=EXEC | READ)  # a bad last one
        _inject(c, ACCEL0, 0xD000, 16, last=True)
        nxt = fault_event(c)
        assert [(r["grpid"], r["addr"]) for r in nxt["faults"]] == [(16, 0xD000)]
        assert _delta(before, _counters(c), "bad_requests")["bad_requests"] == 3
        assert c.call(
            "page_response",
            fault_id=p.fault_id,
            responses=[{"cookie": ev["cookie"], "code": 0}, {"cookie": nxt["cookie"], "code": 0}],
        ) == {"done": 2}


# --- item 8: FLR leaves fault queues alone --------------------------------------------------


def test_v2_8_device_reset_keeps_pending_groups_answerable(iopfd: DaemonProc) -> None:
    with iopfd.client(client="owner") as c, iopfd.client(client="admin") as admin:
        p = fault_path(c)
        _inject(c, ACCEL0, 0xE000, 17)
        cookie = fault_event(c)["cookie"]
        before = _counters(admin)
        assert c.call("device_reset", dev_id=p.dev_id) == {}
        assert admin.error("device_reset", dev_id=p.dev_id) == "ENOENT"  # not its device
        assert _pending_cookies(c, p.fault_id) == [cookie]
        assert _device_row(c, ACCEL0)["attached"] == {"rid": p.hwpt_id}
        assert c.call(
            "page_response", fault_id=p.fault_id, responses=[{"cookie": cookie, "code": 0}]
        ) == {"done": 1}
        # The admin's reset is the same FLR.
        _inject(c, ACCEL0, 0xF000, 18)
        cookie = fault_event(c)["cookie"]
        assert admin.call("reset", rid=ACCEL0) == {}
        assert c.call(
            "page_response", fault_id=p.fault_id, responses=[{"cookie": cookie, "code": 1}]
        ) == {"done": 1}
        assert _delta(before, _counters(admin), "resets") == {"resets": 2}
        # The device still faults and is served after the resets.
        dma_id = c.start("dma", dev_id=p.dev_id, iova=IOVA, length=4096, perm=WRITE)
        ev = fault_event(c)
        c.call("ioas_map", ioas_id=p.ioas_id, iova=IOVA, length=4096, perm=READ | WRITE)
        c.call(
            "page_response", fault_id=p.fault_id, responses=[{"cookie": ev["cookie"], "code": 0}]
        )
        assert c.wait_reply(dma_id)["result"]["status"] == "ok"


# --- item 9: hot-unplug asks first ----------------------------------------------------------


def test_v2_9_unplug_asks_the_owner_and_replies_once_it_unbinds(iopfd: DaemonProc) -> None:
    with iopfd.client(client="owner") as owner, iopfd.client(client="admin") as admin:
        p = fault_path(owner, ACCEL1)
        _inject(owner, ACCEL1, 0x1000, 19)
        cookie = fault_event(owner)["cookie"]
        before = _counters(admin)
        unplug_id = admin.start("unplug", rid=ACCEL1)
        req = owner.wait_event("device_request")
        assert set(req) == {"event", "seq", "dev_id", "rid"}
        assert (req["dev_id"], req["rid"]) == (p.dev_id, ACCEL1)
        # The reply waits for the owner; the device is bound and being removed.
        row = next(d for d in admin.call("devices")["devices"] if d["rid"] == ACCEL1)
        assert unplug_id not in admin.replies
        assert (row["state"], row["removing"]) == ("bound", True)
        with iopfd.client() as other:
            assert other.error("bind", rid=ACCEL1) == "ENODEV"
        assert admin.error("unplug", rid=ACCEL1) == "EBUSY"
        # Its pending cookie stays answerable until it lets go.
        assert owner.call(
            "page_response", fault_id=p.fault_id, responses=[{"cookie": cookie, "code": 0}]
        ) == {"done": 1}
        owner.call("unbind", dev_id=p.dev_id)
        assert admin.wait_reply(unplug_id) == {
            "id": unplug_id,
            "ok": True,
            "result": {"forced": False},
        }
        row = next(d for d in admin.call("devices")["devices"] if d["rid"] == ACCEL1)
        assert (row["state"], row["removing"]) == ("removed", False)
        assert _delta(
            before,
            _counters(admin),
            "unplugs",
            "forced_unplugs",
            "device_requests",
            "auto_responses",
        ) == {"unplugs": 1, "forced_unplugs": 0, "device_requests": 1, "auto_responses": 0}
        admin.call("plug", rid=ACCEL1)


def test_v2_9_unplug_forces_the_removal_when_the_grace_period_ends(iopfd: DaemonProc) -> None:
    with iopfd.client(client="owner") as owner, iopfd.client(client="admin") as admin:
        p = fault_path(owner, ACCEL1)
        _inject(owner, ACCEL1, 0x2000, 20)
        fault_event(owner)
        before = _counters(admin)
        # The owner never lets go: the hardware task wakes at the deadline and removes it.
        reply = admin.request("unplug", rid=ACCEL1, grace_s=0.2)
        assert reply["result"] == {"forced": True}
        assert owner.wait_event("device_request")["dev_id"] == p.dev_id
        assert _pending_cookies(admin, p.fault_id) == []  # answered INVALID by it
        assert _delta(before, _counters(admin), "unplugs", "forced_unplugs", "auto_responses") == {
            "unplugs": 1,
            "forced_unplugs": 1,
            "auto_responses": 1,
        }
        assert owner.error("dma", dev_id=p.dev_id, iova=IOVA, length=4096, perm=READ) == "ENODEV"
        owner.call("unbind", dev_id=p.dev_id)
        admin.call("plug", rid=ACCEL1)


def test_v2_9_force_removes_at_once_and_a_free_device_needs_no_asking(iopfd: DaemonProc) -> None:
    with iopfd.client(client="owner") as owner, iopfd.client(client="admin") as admin:
        p = fault_path(owner, ACCEL1)
        before = _counters(admin)
        assert admin.call("unplug", rid=ACCEL1, force=True) == {"forced": True}
        admin.call("plug", rid=ACCEL1)
        assert admin.call("unplug", rid=ACCEL1) == {"forced": False}  # nobody holds it
        admin.call("plug", rid=ACCEL1)
        assert _delta(before, _counters(admin), "unplugs", "forced_unplugs", "device_requests") == {
            "unplugs": 2,
            "forced_unplugs": 1,
            "device_requests": 0,
        }
        assert owner.error("device_reset", dev_id=p.dev_id) == "ENODEV"
        assert not [e for e in owner.events if e["event"] == "device_request"]
        for bad in ({"grace_s": -1}, {"grace_s": 3601}, {"force": 1}):
            assert admin.error("unplug", rid=ACCEL1, **bad) == "EINVAL"


def test_v2_9_an_unplug_whose_admin_left_still_completes_when_the_owner_unbinds(
    iopfd: DaemonProc,
) -> None:
    with iopfd.client(client="owner") as owner:
        p = fault_path(owner, ACCEL1)
        admin = iopfd.client(client="admin")
        admin.start("unplug", rid=ACCEL1)
        owner.wait_event("device_request")
        admin.close()
        owner.call("unbind", dev_id=p.dev_id)
        with iopfd.client() as check:
            row = next(d for d in check.call("devices")["devices"] if d["rid"] == ACCEL1)
            assert row["state"] == "removed"
            check.call("plug", rid=ACCEL1)


# --- item 10: VFIO semantics for attach and detach ----------------------------------------


def test_v2_10_attach_where_attached_replaces_and_detach_of_nothing_succeeds(
    iopfd: DaemonProc,
) -> None:
    with iopfd.client() as c, iopfd.client() as other:
        p = fault_path(c)
        hwpt2 = c.call(
            "hwpt_alloc", dev_id=p.dev_id, pt_id=p.ioas_id, flags=[], fault_id=p.fault_id
        )["hwpt_id"]
        _inject(c, ACCEL0, 0x3000, 21)
        fault_event(c)
        before = _counters(c)
        assert c.call("attach", dev_id=p.dev_id, pt_id=hwpt2) == {"hwpt_id": hwpt2}  # a replace
        # The old attachment's pending group was answered INVALID by the daemon.
        assert _pending_cookies(c, p.fault_id) == []
        assert _delta(before, _counters(c), "auto_responses") == {"auto_responses": 1}
        assert _device_row(c, ACCEL0)["attached"] == {"rid": hwpt2}
        c.call("detach", dev_id=p.dev_id)
        assert c.call("detach", dev_id=p.dev_id) == {}
        # Fault-capable attach to a function without PRI is ENODEV, as intel_iommu does.
        for rid in (ATS_NO_PRI, LEGACY):
            dev = c.call("bind", rid=rid)["dev_id"]
            hwpt = c.call("hwpt_alloc", dev_id=dev, pt_id=p.ioas_id, flags=[], fault_id=p.fault_id)[
                "hwpt_id"
            ]
            assert c.error("attach", dev_id=dev, pt_id=hwpt) == "ENODEV"
        # hwpt_alloc's pt_id: unknown, or another connection's, is EINVAL.
        theirs = other.call("ioas_alloc")["ioas_id"]
        for pt_id in (theirs, p.ioas_id + 10_000):
            assert c.error("hwpt_alloc", dev_id=p.dev_id, pt_id=pt_id, flags=[]) == "EINVAL"


# --- item 11: kernel profiles ---------------------------------------------------------------


def test_v2_11_hello_and_status_report_the_kernel_profile(
    iopfd: DaemonProc, iopfd_612: DaemonProc
) -> None:
    for daemon, kernel in ((iopfd, "6.18"), (iopfd_612, "6.12")):
        with daemon.client() as c:
            assert c.hello_result is not None and c.hello_result["kernel"] == kernel
            assert c.call("status")["kernel"] == kernel


def test_v2_11_the_config_key_picks_the_profile_and_the_flag_wins(tmp_path: Path) -> None:
    for config, args, kernel in (
        ('kernel = "6.12"\n', (), "6.12"),
        ("kernel = 6.12\n", (), "6.12"),
        ('kernel = "6.12"\n', ("--kernel", "6.18"), "6.18"),
    ):
        d = start_daemon(tmp_path, config, args=args)
        try:
            with d.client() as c:
                assert c.hello_result is not None and c.hello_result["kernel"] == kernel
                assert c.call("status")["kernel"] == kernel
            d.assert_identity_at_rest()
        finally:
            finish(d)


@pytest.mark.parametrize(("config", "args"), [('kernel = "5.4"\n', ()), ("", ("--kernel", "6.1"))])
def test_v2_11_an_unknown_kernel_exits_2(
    tmp_path: Path, config: str, args: tuple[str, ...]
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(config)
    proc = subprocess.run(
        [*iopfd_command(), "--config", str(cfg), "--socket", str(tmp_path / "s.sock"), *args],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert b"kernel" in proc.stderr


def test_v2_11_a_fault_capable_paging_hwpt_exists_on_6_18_only(
    iopfd: DaemonProc, iopfd_612: DaemonProc
) -> None:
    with iopfd.client() as c:
        fault_path(c)  # a paging HWPT with fault_id, attached
    with iopfd_612.client() as c:
        dev = c.call("bind", rid=ACCEL0)["dev_id"]
        ioas = c.call("ioas_alloc")["ioas_id"]
        fault = c.call("fault_alloc")["fault_id"]
        assert (
            c.error("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=[], fault_id=fault) == "EOPNOTSUPP"
        )


def test_v2_11_on_6_12_a_nested_fault_capable_hwpt_serves_a_faulting_dma(
    iopfd_612: DaemonProc,
) -> None:
    with iopfd_612.client() as c:
        assert _device_row(c, ACCEL1)["pri_enabled"] is False
        n = _nested_fault_path(c, ACCEL1, flags=[])
        assert _device_row(c, ACCEL1)["pri_enabled"] is True  # with the fault attach
        gpa = 0x4000_0000
        c.call(
            "hwpt_s1_map", hwpt_id=n["nested"], iova=IOVA, length=4096, gpa=gpa, perm=READ | WRITE
        )
        dma_id = c.start("dma", dev_id=n["dev"], iova=IOVA, length=4096, perm=READ)
        ev = fault_event(c)
        assert ev["faults"][-1]["flags"] == LAST_PAGE and ev["faults"][-1]["addr"] == IOVA
        c.call("ioas_map", ioas_id=n["ioas"], iova=gpa, length=4096, perm=READ | WRITE)
        assert c.call(
            "page_response", fault_id=n["fault"], responses=[{"cookie": ev["cookie"], "code": 0}]
        ) == {"done": 1}
        assert c.wait_reply(dma_id)["result"]["status"] == "ok"
        c.call("detach", dev_id=n["dev"])
        assert _device_row(c, ACCEL1)["pri_enabled"] is False  # off with the last one


# --- item 12: destroy names its object with obj_id ----------------------------------------


def test_v2_12_destroy_takes_obj_id_and_id_is_the_requests_own(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        ioas = c.call("ioas_alloc")["ioas_id"]
        reply = c.request("destroy", id=ioas)
        assert (reply["id"], reply["error"]["code"]) == (ioas, "EINVAL")
        assert c.call("ioas_map", ioas_id=ioas, iova=0, length=4096, perm=READ) == {"iova": 0}
        assert c.request("destroy", id=ioas + 1, obj_id=ioas) == {
            "id": ioas + 1,
            "ok": True,
            "result": {},
        }
        assert c.error("ioas_map", ioas_id=ioas, iova=0, length=4096, perm=READ) == "ENOENT"


def test_ioas_map_without_an_iova_lets_the_daemon_pick_and_says_where(iopfd: DaemonProc) -> None:
    # IOMMU_IOAS_MAP without IOMMU_IOAS_MAP_FIXED_IOVA (the uAPI work's extension).
    with iopfd.client() as c:
        ioas = c.call("ioas_alloc")["ioas_id"]
        first = c.call("ioas_map", ioas_id=ioas, length=0x4000, perm=READ | WRITE)["iova"]
        second = c.call("ioas_map", ioas_id=ioas, length=0x1000, perm=READ)["iova"]
        assert first % 0x4000 == 0 and second == first + 0x4000
        at = 0x4000_0000
        fixed = c.call("ioas_map", ioas_id=ioas, iova=at, length=0x1000, perm=READ)
        assert fixed["iova"] == at
        assert c.error("ioas_map", ioas_id=ioas, iova=at, length=0x1000, perm=READ) == "EBUSY"
        assert c.call("ioas_unmap", ioas_id=ioas, iova=first, length=0x5000)["unmapped"] == 0x5000


def test_hw_info_reports_the_vt_d_registers_behind_a_device(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        dev = c.call("bind", rid=ACCEL0)["dev_id"]
        info = c.call("hw_info", dev_id=dev)
        assert info["type"] == "intel_vtd" and info["flags"] == 0
        assert info["ecap_reg"] >> 29 & 1 and info["ecap_reg"] >> 42 & 1  # PRS, PDS
        assert c.error("hw_info", dev_id=4242) == "ENOENT"
        rows = c.call("devices")["devices"]
        assert [r["vfio"] for r in rows] == list(range(len(rows)))
