"""The client library against the real daemon: every op, errors, faults and events."""

from __future__ import annotations

import pytest
import trio

from clients import (
    Busy,
    DmaStatus,
    FaultGroup,
    InvalidArgument,
    IopfClient,
    IopfError,
    NoDevice,
    NoSuchObject,
    Perm,
    ResponseCode,
)
from clients.sync import SyncClient
from tests.clients.conftest import LiveDaemon

pytestmark = pytest.mark.integration

PF = "0000:3a:00.0"  # PRI, ATS, 20 PASID bits
VF = "0000:3b:00.1"
NO_PRI = "0000:3c:00.0"
RW = Perm.READ | Perm.WRITE


async def _answer_all(c: IopfClient, fault_id: int, ioas: int, seen: list[FaultGroup]) -> None:
    async for g in c.fault_queue(fault_id):
        seen.append(g)
        for a in g.addresses:
            await c.ioas_map(ioas, a, 4096)
        await c.answer(g, ResponseCode.SUCCESS)


async def test_paging_ops_serve_a_faulting_dma_and_tear_down(live: LiveDaemon) -> None:
    async with IopfClient.open(live.path, client_name="it-paging") as c:
        devs = {d.rid: d for d in await c.devices()}
        assert devs[PF].pri and devs[PF].state == "free" and devs[VF].is_vf
        assert c.hello_info is not None and c.hello_info.kernel == "6.18"
        dev = await c.bind(PF)
        ioas = await c.ioas_alloc()
        fid = await c.fault_alloc()
        # RID and a PASID on one HWPT: PASID-compatible (kernel 6.15+, protocol v2)
        hwpt = await c.hwpt_alloc(dev, ioas, flags=["pasid"], fault_id=fid)
        await c.attach(dev, hwpt)
        await c.attach(dev, hwpt, pasid=7)
        seen: list[FaultGroup] = []
        async with trio.open_nursery() as n:
            n.start_soon(_answer_all, c, fid, ioas, seen)
            with trio.fail_after(10):
                r1 = await c.dma(dev, 0x10_0000, 0x4000, RW)
                r2 = await c.dma(dev, 0x20_0000, 0x1000, Perm.READ, pasid=7)
                r3 = await c.dma(dev, 0x10_0000, 0x4000, RW)
            n.cancel_scope.cancel()
        assert (r1.status, r1.faults, r1.bytes) == (DmaStatus.OK, 4, 0x4000)
        assert r2.ok and r2.faults == 1 and r3.ok and r3.faults == 0
        assert [g.pasid for g in seen] == [None, 7]
        assert seen[0].records[-1].last_page and not seen[0].records[0].last_page
        assert not seen[0].records[0].needs_pasid and seen[1].records[0].needs_pasid
        # a second answer to an answered cookie is refused: the fault fd's write() fails
        # on a bad first entry, and page_response_each reports it in the entry's slot
        with pytest.raises(InvalidArgument):
            await c.page_response(fid, [(seen[0].cookie, 0)])
        assert await c.page_response_each(fid, [(seen[0].cookie, 0)]) == ["EINVAL"]
        assert await c.ioas_unmap(ioas, 0x10_0000, 0x4000) == 0x4000
        hwpt2 = await c.hwpt_alloc(dev, ioas, flags=["pasid"], fault_id=fid)
        await c.replace(dev, hwpt2)
        await c.detach(dev, pasid=7)
        await c.detach(dev)
        with pytest.raises(Busy):
            await c.destroy(fid)  # still referenced by the HWPTs
        for obj in (hwpt, hwpt2, fid, ioas):
            await c.destroy(obj)
        await c.unbind(dev)
        with pytest.raises(NoSuchObject):
            await c.destroy(ioas)


async def test_nested_ops_translate_through_guest_stage1_and_fault_after_invalidate(
    live: LiveDaemon,
) -> None:
    async with IopfClient.open(live.path, client_name="it-nested") as c:
        dev = await c.bind(PF)
        ioas = await c.ioas_alloc()
        fid = await c.fault_alloc()
        parent = await c.hwpt_alloc(dev, ioas, flags=["nest_parent"])
        nested = await c.hwpt_alloc(dev, parent, fault_id=fid, data={"type": "vtd_s1"})
        await c.attach(dev, nested)
        iova, gpa = 0x7F00_0000_0000, 0x4000_0000
        await c.hwpt_s1_map(nested, iova, 0x2000, gpa, RW)
        await c.ioas_map(ioas, gpa, 0x2000, RW)
        with trio.fail_after(10):
            assert (await c.dma(dev, iova, 0x2000, Perm.READ)).faults == 0
        assert await c.hwpt_s1_unmap(nested, iova, 0x2000) == 0x2000
        await c.hwpt_invalidate(nested, iova, 0x2000)
        await c.hwpt_invalidate(nested)

        async def refuse() -> None:
            g = await c.fault_queue(fid).receive()
            assert g.addresses[0] == iova
            await c.answer(g, ResponseCode.INVALID)

        async with trio.open_nursery() as n:
            n.start_soon(refuse)
            with trio.fail_after(10):
                res = await c.dma(dev, iova, 0x1000, Perm.READ)
        assert res.status == DmaStatus.INVALID


async def test_errors_carry_errno_names_and_leave_the_connection_usable(
    live: LiveDaemon,
) -> None:
    async with (
        IopfClient.open(live.path, client_name="it-a") as a,
        IopfClient.open(live.path, client_name="it-b") as b,
    ):
        dev = await a.bind(PF)
        with pytest.raises(Busy) as ei:
            await b.bind(PF)
        assert ei.value.errno == "EBUSY"
        with pytest.raises(NoSuchObject):
            await b.unbind(dev)  # IDs are per connection
        nopri = await a.bind(NO_PRI)
        ioas = await a.ioas_alloc()
        fid = await a.fault_alloc()
        hwpt = await a.hwpt_alloc(nopri, ioas, fault_id=fid)
        with pytest.raises(NoDevice):  # intel_iommu_enable_iopf: no PRI is ENODEV
            await a.attach(nopri, hwpt)
        vf = await a.bind(VF)
        vf_hwpt = await a.hwpt_alloc(vf, ioas, fault_id=fid)
        with pytest.raises(IopfError) as ei2:
            await a.attach(vf, vf_hwpt)
        assert ei2.value.errno == "EINVAL"
        with pytest.raises(IopfError) as ei3:
            await a.request("no_such_op")
        assert ei3.value.errno == "EINVAL"
        assert await a.ioas_alloc() > ioas


async def test_admin_ops_see_inject_pending_unplug_plug_and_reset(live: LiveDaemon) -> None:
    async with (
        IopfClient.open(live.path, client_name="it-vmm") as vmm,
        IopfClient.open(live.path, client_name="it-admin") as admin,
    ):
        assert admin.admin
        dev = await vmm.bind(PF)
        ioas = await vmm.ioas_alloc()
        fid = await vmm.fault_alloc()
        hwpt = await vmm.hwpt_alloc(dev, ioas, fault_id=fid)
        await vmm.attach(dev, hwpt)
        trace = await admin.subscribe(["fault", "response", "auto_response", "device"])
        await admin.inject(PF, 0x9000, Perm.READ, 5)
        await admin.inject(PF, 0xA000, Perm.READ, 6)
        with trio.fail_after(5):
            g = await vmm.fault_queue(fid).receive()
            g2 = await vmm.fault_queue(fid).receive()
        assert (g.addresses, g.grpid, g.pasid) == ([0x9000], 5, None)
        rows = [p for p in await admin.pending() if p.fault_id == fid]
        assert [(p.cookie, p.rid) for p in rows] == [(g.cookie, PF), (g2.cookie, PF)]
        assert rows[0].extra["client"].startswith("it-vmm")
        objs = (await admin.objects())["objects"]
        assert {o["id"] for o in objs} >= {dev, ioas, fid, hwpt}
        topo = await admin.topology()
        assert any(d["rid"] == PF and d["state"] == "bound" for d in topo["devices"])
        before = (await admin.status()).counters
        forced: list[bool] = []

        async def unplug() -> None:
            forced.append(await admin.unplug(PF, grace_s=30))

        async with trio.open_nursery() as n:
            n.start_soon(unplug)
            with trio.fail_after(10):
                req = await vmm.device_requests().__anext__()  # asked before removal
            assert (req.dev_id, req.rid) == (dev, PF)
            assert {d.rid: d.removing for d in await admin.devices()}[PF]
            await vmm.answer(g, ResponseCode.SUCCESS)  # its cookies stay answerable
            await vmm.unbind(dev)  # answers g2 itself (INVALID), then the unplug completes
        assert forced == [False]
        after = (await admin.status()).counters
        assert after["auto_responses"] == before["auto_responses"] + 1
        assert after["responses"] == before["responses"] + 1
        assert after["unplugs"] == before["unplugs"] + 1
        assert [p for p in await admin.pending() if p.fault_id == fid] == []
        with pytest.raises(IopfError) as ei:
            await admin.unplug(PF)
        assert ei.value.errno == "EINVAL"
        await admin.plug(PF)
        await admin.reset(PF)
        assert {d.rid: d.state for d in await admin.devices()}[PF] == "free"
        topics: list[str] = []
        with trio.fail_after(5):
            async for rec in trace:
                topics.append(rec.topic)
                if rec.topic == "device" and rec.fields.get("state") == "removed":
                    break
        assert topics[0] == "fault" and {"response", "auto_response"} <= set(topics)


async def test_status_counters_satisfy_the_exactly_once_identity_at_rest(
    live: LiveDaemon,
) -> None:
    async with IopfClient.open(live.path, client_name="it-identity") as c:
        k = (await c.status()).counters
        pending = len(await c.pending())
    assert k["groups"] == k["responses"] + k["auto_responses"] + k["throttled"] + pending


def test_sync_client_serves_faults_of_its_own_dma_through_on_fault(live: LiveDaemon) -> None:
    with SyncClient(live.path, client_name="it-sync") as c:
        dev = c.bind(PF)
        ioas = c.ioas_alloc()
        fid = c.fault_alloc()
        hwpt = c.hwpt_alloc(dev, ioas, fault_id=fid)
        c.attach(dev, hwpt)

        def on_fault(g: FaultGroup) -> int:
            for a in g.addresses:
                c.ioas_map(ioas, a, 4096)
            return ResponseCode.SUCCESS

        res = c.dma(dev, 0x30_0000, 0x3000, RW, on_fault=on_fault)
        assert res.ok and res.faults == 3
        c.request("inject", rid=PF, addr=0x8000, perm=1, grpid=9, last=True)
        g = c.next_fault(timeout=5)
        assert g is not None and g.grpid == 9
        c.answer(g, ResponseCode.INVALID)
        assert c.next_fault(timeout=0.05) is None
        c.device_reset(dev)
        c.detach(dev)
        c.detach(dev)  # nothing attached: not an error (VFIO)
        c.unbind(dev)
