"""The machine: IOMMU units, PCI functions, the links between them, and time.

Page requests are *posted*: a function puts them on its link and they reach the IOMMU
on the next ``advance()``, or earlier when an invalidation wait with PD=1 executes on
that unit (vtd-hw.md 4.1). Responses executed from the invalidation queue only mark
transfers due; their work runs in the next ``advance(now)``, so nothing re-enters the
caller. The machine's notion of now is the last ``now`` passed in.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque

from hwmodel.descriptors import PageRequestDescriptor
from hwmodel.iommu import IommuUnit
from hwmodel.pci import _DUE, DmaStatus, DmaTransfer, PciFunction
from hwmodel.rid import PAGE_SHIFT, Perm, Rid, perm_of
from hwmodel.topology import TopologySpec

#: READ | WRITE | EXEC as an int: a DMA needs one of them (no enum arithmetic per DMA).
_ACCESS = int(Perm.READ | Perm.WRITE | Perm.EXEC)


class Machine:
    def __init__(
        self,
        spec: TopologySpec,
        *,
        max_retries: int = 8,
        retry_backoff_ns: int = 20_000,
        retry_backoff_max_ns: int = 5_000_000,
        prg_max_pages: int = 4,
    ) -> None:
        if max_retries < 0 or retry_backoff_ns < 0 or retry_backoff_max_ns < 0:
            raise ValueError("retry parameters must be >= 0")
        if not 1 <= prg_max_pages <= 512:
            raise ValueError("prg_max_pages must be in 1..512")
        self.spec = spec
        self.max_retries = max_retries
        self.retry_backoff_ns = retry_backoff_ns
        self.retry_backoff_max_ns = retry_backoff_max_ns
        self.prg_max_pages = prg_max_pages
        self.now = 0
        self._counters: Counter[str] = Counter()
        self._dma_pages = 0  # counted on every DMA: an int, in ``counters`` as dma_pages
        self.iommus: dict[str, IommuUnit] = {}
        # Units whose page-request event fired since ``take_interrupts`` (each unit
        # appends itself), so a service pass with no event looks at no unit.
        self._fired: list[IommuUnit] = []
        for u in spec.iommus:
            unit = IommuUnit(u)
            unit.drain_hook = self._drain_unit
            unit.irq_queue = self._fired
            self.iommus[u.name] = unit
        self.functions: dict[str, PciFunction] = {}
        by_rid: dict[Rid, PciFunction] = {}
        for f in sorted(spec.functions, key=lambda f: f.pf is not None):  # PFs first
            unit = self.iommus[f.iommu]
            pf = by_rid[f.pf] if f.pf is not None else None
            fn = PciFunction(f, unit, self, pf)
            by_rid[f.rid] = fn
            unit.endpoints[f.rid.sid] = fn
        for f in spec.functions:  # keep the topology's order
            self.functions[str(f.rid)] = by_rid[f.rid]
        self._by_rid = by_rid  # Rid -> function: no string formatting per DMA
        self._links: dict[str, deque[tuple[PciFunction, PageRequestDescriptor]]] = {
            name: deque() for name in self.iommus
        }
        self._posted = 0
        self._heap: list[tuple[int, int, int, DmaTransfer]] = []
        self._seq = 0
        self._next_id = 1
        self._completed: list[DmaTransfer] = []

    # ------------------------------------------------------------------ lookup
    def function(self, rid: Rid | str) -> PciFunction:
        """The function named by ``rid``; ``KeyError`` if unknown, ``ValueError`` if malformed."""
        if isinstance(rid, Rid):
            return self._by_rid[rid]
        return self.functions[str(Rid.parse(rid.lower()))]

    @property
    def counters(self) -> Counter[str]:
        """Machine-wide sums: the machine's own counters plus every unit's and function's."""
        total: Counter[str] = Counter(self._counters)
        if self._dma_pages:
            total["dma_pages"] += self._dma_pages
        for u in self.iommus.values():
            total.update(u.counters)
        for f in self.functions.values():
            if f.counters:
                total.update(f.counters)
        return total

    # ------------------------------------------------------------------ fabric (for PciFunction)
    def post(self, fn: PciFunction, desc: PageRequestDescriptor) -> None:
        self._links[fn.iommu.name].append((fn, desc))
        self._posted += 1

    def schedule(self, t: DmaTransfer, due: int) -> None:
        t._state = _DUE
        t._due = due
        t._gen += 1
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, t._gen, t))

    def complete(self, t: DmaTransfer) -> None:
        self._completed.append(t)

    # ------------------------------------------------------------------ DMA
    def start_dma(  # noqa: PLR0917 - the signature is the documented public API
        self,
        rid: Rid,
        pasid: int | None,
        iova: int,
        length: int,
        perm: Perm,
        now: int,
        tag: object = None,
    ) -> DmaTransfer:
        """Start a DMA of ``length`` bytes at ``iova``; it runs at once as far as it can.

        ``ValueError`` for a malformed request (length <= 0, no permission, a PASID on a
        function whose PASID capability is not enabled or too wide for it).
        """
        if now > self.now:  # noqa: PLR1730 - max() is a call, on the hot path
            self.now = now
        fn = self._by_rid[rid] if isinstance(rid, Rid) else self.function(rid)
        if length <= 0 or iova < 0 or iova + length > 1 << 64:
            raise ValueError(f"bad DMA range iova={iova:#x} length={length:#x}")
        access = int(perm)
        perm = perm_of(access)
        if not access & _ACCESS:
            raise ValueError("a DMA needs READ, WRITE or EXEC")
        if pasid is not None:
            if not fn.pasid_enabled:
                raise ValueError(f"{fn.rid}: PASID capability not enabled")
            if not 0 <= pasid < 1 << fn.spec.pasid_bits:
                raise ValueError(f"{fn.rid}: PASID {pasid:#x} exceeds {fn.spec.pasid_bits} bits")
        # positional: id, rid, pasid, iova, length, perm, tag, status, faults, bytes,
        # retries, started_ns, finished_ns, _next
        t = DmaTransfer(
            self._next_id,
            fn.rid,
            pasid,
            iova,
            length,
            perm,
            tag,
            None,
            0,
            0,
            0,
            self.now,
            None,
            iova,
        )
        self._next_id += 1
        self._dma_pages += ((iova + length - 1) >> PAGE_SHIFT) - (iova >> PAGE_SHIFT) + 1
        if not fn.present:
            t._function = fn
            t.status = DmaStatus.REMOVED
            t.finished_ns = self.now
            fn.counters["dma_started"] += 1
            fn.counters["dma_completed_removed"] += 1
            self._completed.append(t)
            return t
        fn._begin(t)
        return t

    def inject_page_request(self, rid: Rid, desc: PageRequestDescriptor, now: int) -> None:
        """Post ``desc`` as if ``rid`` had sent it (admin ``inject``). Its response is
        absorbed by the function without touching its own PRI state."""
        self._tick(now)
        fn = self.function(rid)
        if desc.sid != fn.sid:
            raise ValueError(f"descriptor SID {desc.sid:#06x} is not {fn.rid}'s {fn.sid:#06x}")
        if not fn.present:
            self._counters["page_requests_injected_to_absent"] += 1
            return
        if desc.lpig and not desc.is_stop_marker:
            fn._injected[desc.prg_index] = fn._injected.get(desc.prg_index, 0) + 1
        self._counters["page_requests_injected"] += 1
        self.post(fn, desc)

    def advance(self, now: int) -> None:
        """Deliver posted page requests and run retries due by ``now``, until quiet."""
        if now > self.now:  # noqa: PLR1730 - max() is a call, on the hot path
            self.now = now
        heap = self._heap
        if not self._posted and not (heap and heap[0][0] <= self.now):
            return  # nothing posted, nothing due: the common case of a service pass
        for _ in range(10_000):
            delivered = self._deliver_all() if self._posted else 0
            ran = self._run_due() if heap and heap[0][0] <= self.now else 0
            if not delivered and not ran:
                return
        raise RuntimeError("machine did not settle")  # pragma: no cover

    def next_deadline(self) -> int | None:
        """The earliest time ``advance`` has work: now if page requests are posted,
        else the earliest retry, else None."""
        if self._posted:
            return self.now
        heap = self._heap
        while heap:
            due, _, gen, t = heap[0]
            if t._state == _DUE and t._gen == gen and t.status is None:
                return due
            heapq.heappop(heap)
        return None

    def take_interrupts(self) -> list[IommuUnit]:
        """Units whose page-request event fired since the last call."""
        fired = self._fired
        if not fired:
            return []  # no event since the last call: no scan of the units
        if len(fired) == 1:
            u = fired[0]
            fired.clear()
            if not u.irq_pending:
                return []
            u.irq_pending = False
            return [u]
        # several: in the units' order, each once
        out = [u for u in self.iommus.values() if u.irq_pending]
        fired.clear()
        for u in out:
            u.irq_pending = False
        return out

    def take_completed(self) -> list[DmaTransfer]:
        out, self._completed = self._completed, []
        return out

    @property
    def posted_page_requests(self) -> int:
        return self._posted

    def _tick(self, now: int) -> None:
        self.now = max(self.now, now)

    def _drain_unit(self, unit: IommuUnit) -> None:
        self._deliver_unit(unit)

    def _deliver_unit(self, unit: IommuUnit) -> int:
        link = self._links[unit.name]
        n = 0
        while link:
            fn, desc = link.popleft()
            self._posted -= 1
            n += 1
            if not fn.present:
                self._counters["page_requests_lost"] += 1  # the function left the fabric
                continue
            unit.receive_page_request(desc)
        return n

    def _deliver_all(self) -> int:
        if not self._posted:
            return 0
        links = self._links
        n = 0
        for u in self.iommus.values():
            if links[u.name]:
                n += self._deliver_unit(u)
        return n

    def _run_due(self) -> int:
        heap = self._heap
        now = self.now
        ran = 0
        while heap and heap[0][0] <= now:
            _, _, gen, t = heapq.heappop(heap)
            if t._state != _DUE or t._gen != gen or t.status is not None:
                continue
            fn = t._function
            assert fn is not None
            ran += 1
            fn._run(t)
        return ran

    # ------------------------------------------------------------------ lifecycle
    def stop_dma(self, rid: Rid, now: int, *, with_vfs: bool = True) -> None:
        """The driver stops a function's DMA (vtd-hw.md 6.4 step 1 of a removal, which
        takes a PF's VFs too; a release stops the one function): running transfers end
        REMOVED, while page requests already sent stay outstanding until answered, so
        the drain still has them to settle."""
        self._tick(now)
        fn = self.function(rid)
        for f in [*(fn.vfs if with_vfs else ()), fn]:
            if f.present:
                f._stop_dma(DmaStatus.REMOVED)

    def hot_remove(self, rid: Rid, now: int) -> None:
        """Surprise-remove a function (a PF takes its VFs with it): DMA stops (transfers end
        REMOVED), ATC cleared, its posted page requests are lost, invalidations ignored."""
        self._tick(now)
        fn = self.function(rid)
        for f in [*fn.vfs, fn]:
            if f.present:
                f._remove()
                self._counters["hot_removes"] += 1

    def hot_plug(self, rid: Rid, now: int) -> None:
        """Bring a removed function back fresh (ATS/PASID/PRI disabled, caches empty)."""
        self._tick(now)
        fn = self.function(rid)
        if fn.pf is not None and not fn.pf.present:
            raise ValueError(f"VF {fn.rid}: its PF {fn.pf.rid} is not present")
        for f in [fn, *fn.vfs]:
            if not f.present:
                f._plug()
                self._counters["hot_plugs"] += 1

    def flr(self, rid: Rid, now: int) -> None:
        """Function-level reset: transfers in flight end FAILURE, ATC cleared, and on a PF
        PRI returns to its reset state (Enable=0, RF/UPRGI clear, credits returned).
        ATS and PASID enables are kept, as Linux restores them after the reset."""
        self._tick(now)
        fn = self.function(rid)
        if not fn.present:
            raise ValueError(f"{fn.rid} is not present")
        fn._flr()
        self._counters["flrs"] += 1
