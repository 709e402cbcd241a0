"""A demand-paging VMM on iopfd: setup, the fault loop, the guest workload, teardown.

The VMM owns one IOAS (the guest's physical memory as the IOMMU sees it) and one
fault queue. Each device gets a fault-capable HWPT; in nested mode a
``nest_parent`` HWPT on the IOAS plus a nested ``vtd_s1`` HWPT playing the
guest's own page table. Guest buffers start unmapped: every first touch by a
device is a page request, which the fault loop serves the way a VMM backed by
lazily allocated memory does: map the page (IOAS; and in nested mode the
guest's stage-1 entry if the guest had not written it yet), then answer
SUCCESS. A request outside guest memory is answered INVALID, as a VMM must
for a guest programming its device with a bad address.

Kernel profiles (``hello``'s ``kernel``): from 6.15 a HWPT attached at a PASID, and
the RID's HWPT next to it, is allocated with flag ``pasid``; before 6.15 there is no
PASID attach, so only RIDs are attached. Before 6.13 a paging HWPT cannot be
fault-capable, so paging mode uses a nested HWPT whose stage-1 maps guest RAM one to
one (mode ``identity-s1``). A ``device_request`` (an admin hot-unplugging
one of its devices) stops the workload: DMAs in flight finish, every group is
answered, the device is unbound, and the run ends early (``released``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from clients.client import IopfClient, PendingCall
from clients.errors import EventGap, IopfError
from clients.records import (
    PAGE_SHIFT,
    PAGE_SIZE,
    DeviceRequest,
    DmaStatus,
    FaultGroup,
    Perm,
    ResponseCode,
    partial_outcomes,
)
from clients.vmm.report import Progress, VmmStats
from clients.vmm.workload import (
    GUEST_IOVA_BASE,
    GUEST_RAM_BASE,
    DmaOp,
    Target,
    layout_targets,
    page_runs,
    plan_epoch,
)

RW = Perm.READ | Perm.WRITE
VERIFY_RUN_PAGES = 64
#: Largest hwpt_s1_map of the identity stage-1 (well under the daemon's max_map_length).
IDENTITY_MAP_CHUNK = 4 << 20
#: How long a device_request waits for DMAs in flight to finish before releasing anyway.
RELEASE_DRAIN_S = 5.0


#: PASID attaches sent together during set-up (one write, then their replies).
SETUP_BATCH = 256


@dataclass
class VmmOptions:
    devices: list[str] = field(default_factory=list)  # empty: every PRI-capable free PF
    pasids: int = 2
    nested: bool = False
    pattern: str = "sequential"
    pages: int = 256
    dma_pages: int = 4
    stride: int = 8
    concurrency: int = 8
    duration: float = 0.0  # 0: exactly one pass over the buffers
    seed: int = 1
    bad_fraction: float = 0.02
    batch: int = 64  # most groups answered per page_response


@dataclass
class _Device:
    rid: str
    dev_id: int
    pasids: list[int]
    hwpt: int  # what the device is attached to: paging HWPT, or the nested one
    parent: int | None = None  # nested (and identity-s1) mode: the nest_parent HWPT
    released: bool = False  # unbound on the daemon's device_request


class DemandPagingVmm:
    """One guest: its devices, its memory, and the fault loop that backs it on demand."""

    def __init__(self, client: IopfClient, opts: VmmOptions, progress: Progress) -> None:
        self.c = client
        self.opts = opts
        self.progress = progress
        self.stats = VmmStats()
        self.rng = random.Random(opts.seed)
        self.devices: list[_Device] = []
        self._hwpt_by_dev: dict[int, int] = {}
        self.targets: list[Target] = []
        self.ioas = 0
        self.fault_id = 0
        self.ioas_mapped: set[int] = set()  # guest RAM pages (gpa >> 12) backed in the IOAS
        self.s1_mapped: dict[int, set[int]] = {}  # nested hwpt -> iova pages the guest mapped
        self.touched: dict[int, set[int]] = {}  # target index -> buffer pages DMA'd this epoch
        self.guest_pages = 0
        self._busy = False  # the fault loop is serving a batch
        self._t0 = 0.0
        #: "paging", "nested", or "identity-s1" (paging asked, kernel without fault-capable
        #: paging HWPTs: a nested HWPT whose stage-1 maps guest RAM one to one).
        self.mode = "nested" if opts.nested else "paging"
        self._identity_hwpts: list[int] = []
        #: device_request events for our devices, in arrival order.
        self.device_requests: list[DeviceRequest] = []
        self._stop = trio.Event()  # a device_request came: start no more DMAs
        self.pasids_skipped = False

    # -- guest memory -------------------------------------------------------

    def guest_gpa(self, addr: int) -> int | None:
        """The gpa an address the device used stands for, or None outside guest memory."""
        base = GUEST_IOVA_BASE if self.opts.nested else GUEST_RAM_BASE
        off = addr - base
        if 0 <= off < self.guest_pages * PAGE_SIZE:
            return GUEST_RAM_BASE + off
        return None

    # -- setup --------------------------------------------------------------

    async def choose_devices(self) -> list[str]:
        rows = await self.c.devices()
        if self.opts.devices:
            known = {d.rid for d in rows}
            missing = [r for r in self.opts.devices if r not in known]
            if missing:
                raise IopfError("ENOENT", f"no such device: {', '.join(missing)}", "devices")
            return list(self.opts.devices)
        return [d.rid for d in rows if d.pri and not d.is_vf and d.state == "free"]

    @property
    def kernel(self) -> str:
        return self.c.hello_info.kernel if self.c.hello_info is not None else ""

    async def setup(self, rids: list[str]) -> None:
        hello = self.c.hello_info
        assert hello is not None
        if self.mode == "paging" and not hello.paging_fault_hwpt:
            self.mode = "identity-s1"
        #: PASIDs asked for but not attachable on this kernel (said in the output).
        self.pasids_skipped = bool(self.opts.pasids) and not hello.pasid_attach
        rows = {d.rid: d for d in await self.c.devices()}
        self.ioas = await self.c.ioas_alloc()
        self.fault_id = await self.c.fault_alloc()
        layout: list[tuple[str, int, list[int | None]]] = []
        for rid in rids:
            dev_id = await self.c.bind(rid)
            npasid = self.opts.pasids if rows[rid].pasid_bits > 0 and hello.pasid_attach else 0
            npasid = min(npasid, (1 << rows[rid].pasid_bits) - 1) if npasid else 0
            pasids = list(range(1, npasid + 1))
            # One HWPT serves the RID and the PASIDs: with PASIDs attached, 6.15+ wants
            # it PASID-compatible (iommufd_hwpt_pasid_compat), the RID's included.
            flags = ["pasid"] if pasids else []
            parent: int | None = None
            if self.mode == "paging":
                hwpt = await self.c.hwpt_alloc(
                    dev_id, self.ioas, flags=flags, fault_id=self.fault_id
                )
            else:
                parent = await self.c.hwpt_alloc(dev_id, self.ioas, flags=["nest_parent"])
                hwpt = await self.c.hwpt_alloc(
                    dev_id,
                    parent,
                    flags=flags,
                    fault_id=self.fault_id,
                    data={"type": "vtd_s1"},
                )
                if self.mode == "nested":
                    self.s1_mapped[hwpt] = set()
                else:
                    self._identity_hwpts.append(hwpt)
            await self.c.attach(dev_id, hwpt)
            # PASIDs attach in pipelined batches (one write, one round trip each), with
            # progress, so that even a large --pasids is neither slow nor silent.
            for i in range(0, len(pasids), SETUP_BATCH):
                chunk = pasids[i : i + SETUP_BATCH]
                calls = [self.c.submit("attach", dev_id=dev_id, pt_id=hwpt, pasid=p) for p in chunk]
                for call in calls:
                    await call.result()
                self.progress.setup(f"{rid}: PASIDs attached", i + len(chunk), len(pasids))
            self.devices.append(_Device(rid, dev_id, pasids, hwpt, parent))
            self._hwpt_by_dev[dev_id] = hwpt
            layout.append((rid, dev_id, [None, *pasids]))
        self.targets = layout_targets(layout, self.opts.pages, self.opts.nested)
        self.guest_pages = len(self.targets) * self.opts.pages
        for hwpt in self._identity_hwpts:
            # The stage-1 a guest without a vIOMMU has: iova == gpa over its RAM.
            size = self.guest_pages * PAGE_SIZE
            for off in range(0, size, IDENTITY_MAP_CHUNK):
                n = min(IDENTITY_MAP_CHUNK, size - off)
                await self.c.hwpt_s1_map(hwpt, GUEST_RAM_BASE + off, n, GUEST_RAM_BASE + off, RW)

    def _hwpt_of(self, dev_id: int) -> int:
        """The HWPT a device's faults come from (the nested one in nested mode)."""
        return self._hwpt_by_dev[dev_id]

    # -- the fault loop -----------------------------------------------------

    async def fault_loop(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        queue = self.c.fault_queue(self.fault_id)
        task_status.started()
        while True:
            groups = await queue.receive_batch(self.opts.batch)
            self._busy = True
            try:
                await self.serve(groups)
            finally:
                self._busy = False

    async def serve(self, groups: list[FaultGroup]) -> None:
        """Back every page these groups ask for, then answer them all in one page_response."""
        st = self.stats
        st.batches += 1
        s2_new: list[int] = []
        s1_new: dict[int, list[int]] = {}
        answers: list[tuple[int, ResponseCode]] = []
        for g in groups:
            st.groups += 1
            st.faults += len(g.records)
            st.throttled += g.throttled
            gpas = [self.guest_gpa(r.addr) for r in g.records]
            if any(gpa is None for gpa in gpas):
                answers.append((g.cookie, ResponseCode.INVALID))
                st.answers["INVALID"] += 1
                continue
            for r, gpa in zip(g.records, gpas, strict=True):
                assert gpa is not None
                if self.opts.nested:
                    hwpt = self._hwpt_of(r.dev_id)
                    page = r.addr >> PAGE_SHIFT
                    if page not in self.s1_mapped[hwpt]:
                        self.s1_mapped[hwpt].add(page)
                        s1_new.setdefault(hwpt, []).append(page)
                gpage = gpa >> PAGE_SHIFT
                if gpage not in self.ioas_mapped:
                    self.ioas_mapped.add(gpage)
                    s2_new.append(gpage)
            answers.append((g.cookie, ResponseCode.SUCCESS))
            st.answers["SUCCESS"] += 1

        # Maps first, then the answers, all queued in this order and sent in one write:
        # the daemon starts a connection's requests in arrival order, so every mapping
        # is in place when the device sees SUCCESS and retries. One round trip a batch.
        maps: list[tuple[PendingCall, int, str]] = []
        for first, n in page_runs(s2_new):
            gpa = first << PAGE_SHIFT
            maps.append(
                (
                    self.c.submit(
                        "ioas_map", ioas_id=self.ioas, iova=gpa, length=n * PAGE_SIZE, perm=int(RW)
                    ),
                    n,
                    "ioas",
                )
            )
        for hwpt, pages in s1_new.items():
            for first, n in page_runs(pages):
                iova = first << PAGE_SHIFT
                gpa = self.guest_gpa(iova)
                assert gpa is not None
                maps.append(
                    (
                        self.c.submit(
                            "hwpt_s1_map",
                            hwpt_id=hwpt,
                            iova=iova,
                            length=n * PAGE_SIZE,
                            gpa=gpa,
                            perm=int(RW),
                        ),
                        n,
                        "s1",
                    )
                )
        response = (
            self.c.submit(
                "page_response",
                fault_id=self.fault_id,
                responses=[{"cookie": cookie, "code": int(code)} for cookie, code in answers],
            )
            if answers
            else None
        )
        for pending, npages, stage in maps:
            try:
                await pending.result()
            except IopfError as e:
                st.violate(f"{pending.op} of {npages} pages failed: {e}")
                continue
            if stage == "ioas":
                st.map_calls += 1
                st.pages_mapped += npages
            else:
                st.s1_map_calls += 1
                st.s1_pages_mapped += npages
        results = await self._settle(response, answers) if response is not None else []
        done = time.monotonic_ns()
        for (cookie, _), res in zip(answers, results, strict=True):
            if res is not None:
                st.violate(f"page_response cookie {cookie}: {res}")
        st.fault_service_ns.extend(done - g.received_ns for g in groups)

    async def _settle(
        self, response: PendingCall, answers: list[tuple[int, ResponseCode]]
    ) -> list[str | None]:
        """One outcome per answer. The page_response stops at the first refused entry
        (the fault fd's write()): the entries behind it are sent again, so every group
        of the batch is still answered."""
        try:
            done = int((await response.result())["done"])
        except IopfError as e:
            if e.errno != "EINVAL":
                return [e.errno] * len(answers)
            done = 0  # the first entry was refused, nothing applied
        outcomes, settled = partial_outcomes(len(answers), done)
        if settled < len(answers):
            outcomes += await self.c.page_response_each(self.fault_id, answers[settled:])
        return outcomes

    # -- the guest workload -------------------------------------------------

    async def run(self) -> None:
        """Play epochs until ``duration`` is used up (one epoch when it is 0), then verify."""
        opts = self.opts
        self._t0 = time.monotonic()
        deadline = self._t0 + opts.duration if opts.duration > 0 else math.inf
        async with trio.open_nursery() as nursery:
            await nursery.start(self.fault_loop)
            await nursery.start(self._watch_device_requests)
            nursery.start_soon(self._progress_loop, deadline)
            while not self._stop.is_set():
                self.stats.epochs += 1
                self.touched = {t.index: set() for t in self.targets}
                if opts.nested:
                    await self._guest_prefaults()
                plan = plan_epoch(
                    self.targets,
                    pattern=opts.pattern,
                    dma_pages=opts.dma_pages,
                    stride=opts.stride,
                    bad_fraction=opts.bad_fraction,
                    rng=self.rng,
                )
                await self._play(plan, deadline)
                if self._stop.is_set() or time.monotonic() >= deadline or opts.duration <= 0:
                    break
                await self._balloon_out()
            await self._quiesce()
            if self._stop.is_set():
                await self._release_requested()
            await self.verify()
            self.stats.elapsed_s = time.monotonic() - self._t0
            nursery.cancel_scope.cancel()
        self.progress.done()

    async def _watch_device_requests(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """An admin is unplugging one of our devices: stop starting DMAs (the run winds
        down, answers what it holds, then releases the device in ``run``)."""
        stream = self.c.device_requests()
        task_status.started()
        ours = {d.dev_id for d in self.devices}
        while True:
            try:
                req = await stream.__anext__()
            except EventGap:
                continue  # counted by the client; the run reports it
            except StopAsyncIteration:
                return
            if req.dev_id in ours:
                self.device_requests.append(req)
                self._stop.set()

    async def _release_requested(self) -> None:
        """Unbind every device a device_request named; the daemon then removes it."""
        for req in self.device_requests:
            d = next((d for d in self.devices if d.dev_id == req.dev_id), None)
            if d is None or d.released:
                continue
            try:
                await self.c.unbind(d.dev_id)  # detaches its RID and PASIDs first
            except IopfError as e:
                self.stats.violate(f"release {d.rid} on device_request: {e}")
            d.released = True

    def take_late_device_requests(self) -> None:
        """device_requests that came after the run (teardown unbinds those devices)."""
        stream = self.c.device_requests()
        ours = {d.dev_id for d in self.devices}
        while True:
            try:
                req = stream.receive_nowait()
            except EventGap:
                continue
            if req is None:
                return
            if req.dev_id in ours:
                self.device_requests.append(req)

    @property
    def released(self) -> list[str]:
        """The devices given back on a device_request, in order."""
        rids = []
        for req in self.device_requests:
            if req.rid not in rids:
                rids.append(req.rid)
        return rids

    async def _progress_loop(self, deadline: float) -> None:
        total = self.opts.duration if deadline != math.inf else None
        while True:
            await trio.sleep(0.5)
            self.progress.show(time.monotonic() - self._t0, self.stats, total)

    async def _play(self, plan: list[DmaOp], deadline: float) -> None:
        send, recv = trio.open_memory_channel[DmaOp](0)

        async def feeder() -> None:
            async with send:
                for op in plan:
                    if time.monotonic() >= deadline or self._stop.is_set():
                        return
                    await send.send(op)

        async def worker() -> None:
            async for op in recv:
                if self._stop.is_set():
                    continue  # a device is going: DMAs in flight finish, no new one starts
                await self._dma(op)

        async with trio.open_nursery() as n:
            n.start_soon(feeder)
            for _ in range(self.opts.concurrency):
                n.start_soon(worker)

    async def _dma(self, op: DmaOp) -> None:
        st = self.stats
        t = op.target
        t0 = time.monotonic_ns()
        try:
            res = await self.c.dma(t.dev_id, op.iova, op.length, op.perm, pasid=t.pasid)
        except IopfError as e:
            st.dma[e.errno] += 1
            st.violate(f"dma {t.label} iova {op.iova:#x}: {e}")
            return
        dt = time.monotonic_ns() - t0
        st.dma[res.status] += 1
        st.dma_bytes += res.bytes
        st.dma_faults += res.faults
        if res.faults:
            st.dma_fault_ns.append(dt)
        expected = DmaStatus.INVALID if op.bad else DmaStatus.OK
        if res.status != expected:
            st.violate(
                f"dma {t.label} iova {op.iova:#x} +{op.length:#x}: {res.status}, "
                f"expected {expected.value}"
            )
        elif not op.bad:
            self.touched[t.index].update(op.pages())

    async def _guest_prefaults(self) -> None:
        """Nested: the guest wrote stage-1 entries for the first half of each buffer already,
        so those pages miss only at stage 2 (not backed yet) and the rest at both stages."""
        half = self.opts.pages // 2
        if not half:
            return
        for t in self.targets:
            hwpt = self._hwpt_of(t.dev_id)
            await self.c.hwpt_s1_map(hwpt, t.iova, half * PAGE_SIZE, t.gpa, RW)
            self.s1_mapped[hwpt].update(range(t.iova >> PAGE_SHIFT, (t.iova >> PAGE_SHIFT) + half))

    async def _balloon_out(self) -> None:
        """Between epochs the guest gives its buffers back: unmap everything, check the count."""
        await self._quiesce()
        for hwpt, pages in self.s1_mapped.items():
            if pages:
                await self.c.hwpt_s1_unmap(hwpt, GUEST_IOVA_BASE, self.guest_pages * PAGE_SIZE)
                await self.c.hwpt_invalidate(hwpt)
                pages.clear()
        unmapped = await self.c.ioas_unmap(self.ioas, GUEST_RAM_BASE, self.guest_pages * PAGE_SIZE)
        if unmapped != len(self.ioas_mapped) * PAGE_SIZE:
            self.stats.violate(
                f"ioas_unmap returned {unmapped} bytes, the VMM mapped "
                f"{len(self.ioas_mapped) * PAGE_SIZE}"
            )
        self.ioas_mapped.clear()

    async def _quiesce(self) -> None:
        """Wait until the fault loop has answered everything delivered so far."""
        queue = self.c.fault_queue(self.fault_id)
        with trio.move_on_after(RELEASE_DRAIN_S):
            while queue.buffered or self._busy:
                await trio.sleep(0.001)
        if queue.buffered:
            self.stats.violate(f"{queue.buffered} fault groups left unanswered")

    async def verify(self) -> None:
        """Every buffer page a DMA touched this epoch must translate: DMA it again, no fault."""
        st = self.stats
        gone = {d.dev_id for d in self.devices if d.released}
        for t in self.targets:
            if t.dev_id in gone:
                self.touched.pop(t.index, None)  # released: nothing left to verify there
        st.touched_pages = sum(len(p) for p in self.touched.values())
        for t in self.targets:
            if t.dev_id in gone:
                continue
            for first, n in page_runs(sorted(self.touched.get(t.index, ()))):
                for off in range(0, n, VERIFY_RUN_PAGES):
                    count = min(VERIFY_RUN_PAGES, n - off)
                    iova = t.page_iova(first + off)
                    res = await self.c.dma(
                        t.dev_id, iova, count * PAGE_SIZE, Perm.READ, pasid=t.pasid
                    )
                    st.verify_dmas += 1
                    if res.status != DmaStatus.OK or res.faults:
                        st.violate(
                            f"verify {t.label} iova {iova:#x} +{count} pages: {res.status}, "
                            f"{res.faults} faults (touched pages must be mapped)"
                        )
                    else:
                        st.verified_pages += count

    async def check_nothing_pending(self) -> None:
        """Admin view: no group of our fault queue may be pending at the end."""
        if not self.c.admin:
            return
        mine = [p for p in await self.c.pending() if p.fault_id == self.fault_id]
        if mine:
            self.stats.violate(f"{len(mine)} groups still pending in the daemon: {mine[:3]}")

    # -- teardown -----------------------------------------------------------

    async def teardown(self) -> None:
        """Undo the setup in reverse order; every step must succeed."""

        async def step(what: str, fn: Callable[..., Awaitable[object]], *args: object) -> None:
            try:
                await fn(*args)
            except IopfError as e:
                self.stats.violate(f"teardown: {what}: {e}")

        for d in self.devices:
            if d.released:
                continue  # unbound on its device_request: nothing attached any more
            for p in d.pasids:
                await step(f"detach {d.rid} pasid {p}", self.c.detach, d.dev_id, p)
            await step(f"detach {d.rid}", self.c.detach, d.dev_id)
        for d in self.devices:
            await step(f"destroy hwpt {d.hwpt}", self.c.destroy, d.hwpt)
            if d.parent is not None:
                await step(f"destroy parent hwpt {d.parent}", self.c.destroy, d.parent)
        if self.fault_id:
            await step("destroy fault queue", self.c.destroy, self.fault_id)
        if self.ioas:
            await step("destroy ioas", self.c.destroy, self.ioas)
        for d in self.devices:
            if not d.released:
                await step(f"unbind {d.rid}", self.c.unbind, d.dev_id)
