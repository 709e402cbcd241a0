"""PCIe functions: ATS (the ATC), PASID, the PRI capability, and the DMA engine.

The DMA engine walks a transfer's pages in order, translating each through the ATC
(ATS enabled) or the IOMMU. On a miss with PRI usable it sends one page request group
and waits for the page group response; Success retries with back-off, Invalid Request
fails the access, Response Failure (or a reserved code) stops PRI (PCIe 10.4.2.1).
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

from hwmodel.counting import HotCounts
from hwmodel.descriptors import (
    RESP_INVALID,
    RESP_SUCCESS,
    PageGroupResponseDescriptor,
    PageRequestDescriptor,
)
from hwmodel.iommu import IommuUnit
from hwmodel.rid import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, Perm, Rid
from hwmodel.topology import FunctionSpec

PRGI_COUNT = 512  # 9-bit page request group index

# PRI Status register bits (vtd-hw.md 3.3)
PRI_STATUS_RF = 1 << 0
PRI_STATUS_UPRGI = 1 << 1
PRI_STATUS_STOPPED = 1 << 8
PRI_STATUS_PASID_REQUIRED = 1 << 15
PRI_CTRL_ENABLE = 1 << 0
PRI_CTRL_RESET = 1 << 1


class PciError(Exception):
    """A capability operation the function refuses; ``errno`` names the Linux error."""

    def __init__(self, errno: str, message: str) -> None:
        super().__init__(f"{errno}: {message}")
        self.errno = errno
        self.message = message


class PriError(PciError):
    pass


class DmaStatus(enum.Enum):
    OK = "ok"
    INVALID = "invalid"
    FAILURE = "failure"
    NO_PRI = "no_pri"
    RETRY_LIMIT = "retry_limit"
    REMOVED = "removed"


#: What a function counts on every fault (``hwmodel.counting``): hot, in a plain dict.
_HOT_COUNTERS = dict.fromkeys(
    (
        "dma_started",
        "atc_hits",
        "atc_misses",
        "ats_translation_requests",
        "untranslated_requests",
        "page_requests",
        "page_request_groups",
        "page_responses_received",
        "page_responses_success",
        "page_responses_to_injected",  # the admin inject, the fault path bench
        "retries",
        "dma_completed_ok",
    ),
    0,
)
#: The completion counter of every ``DmaStatus`` value: no string built per DMA, and
#: keyed by the value string (an enum member's hash is a Python-level call).
_COMPLETED_KEYS: dict[str, str] = {s.value: f"dma_completed_{s.value}" for s in DmaStatus}


class _State(enum.Enum):
    RUNNING = 0
    WAIT_RESPONSE = 1
    WAIT_CREDITS = 2
    DUE = 3
    DONE = 4


# Enum members as module constants: loading one as a class attribute goes through the
# enum's metaclass, a slower lookup, and the DMA engine tests states on every page.
_RUNNING = _State.RUNNING
_WAIT_RESPONSE = _State.WAIT_RESPONSE
_WAIT_CREDITS = _State.WAIT_CREDITS
_DUE = _State.DUE
_DONE = _State.DONE
_ST_OK = DmaStatus.OK
_ST_INVALID = DmaStatus.INVALID
_ST_FAILURE = DmaStatus.FAILURE
_ST_NO_PRI = DmaStatus.NO_PRI
_ST_RETRY_LIMIT = DmaStatus.RETRY_LIMIT
_ST_REMOVED = DmaStatus.REMOVED


@dataclass(eq=False, slots=True)
class PageRequestGroup:
    """An outstanding page request group (PRG) of one function."""

    prg_index: int
    pasid: int | None
    first_page: int
    npages: int
    transfer: DmaTransfer = field(repr=False)
    issued_ns: int = 0


@dataclass(eq=False, slots=True)
class DmaTransfer:
    id: int
    rid: Rid
    pasid: int | None
    iova: int
    length: int
    perm: Perm
    tag: object = None
    status: DmaStatus | None = None  # None while running
    faults: int = 0  # page requests this transfer issued
    bytes: int = 0  # bytes successfully accessed
    retries: int = 0  # retries after a Success response
    started_ns: int = 0
    finished_ns: int | None = None
    # engine state
    _next: int = field(default=0, repr=False)
    _state: _State = field(default=_RUNNING, repr=False)
    _successes: int = field(default=0, repr=False)  # Success answers for the current page
    _group: PageRequestGroup | None = field(default=None, repr=False)
    _due: int = field(default=0, repr=False)
    _gen: int = field(default=0, repr=False)
    _function: PciFunction | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.status is not None

    @property
    def waiting(self) -> str:
        """What the transfer waits for: "response", "credits", "retry", "" (running/done)."""
        return {
            _WAIT_RESPONSE: "response",
            _WAIT_CREDITS: "credits",
            _DUE: "retry",
        }.get(self._state, "")


class Fabric(Protocol):
    """What a function needs from the machine: the link, the clock, the scheduler."""

    now: int
    max_retries: int
    retry_backoff_ns: int
    retry_backoff_max_ns: int
    prg_max_pages: int

    def post(self, fn: PciFunction, desc: PageRequestDescriptor) -> None: ...
    def schedule(self, t: DmaTransfer, due: int) -> None: ...
    def complete(self, t: DmaTransfer) -> None: ...


class PriCapability:
    """The PCIe Page Request Interface extended capability (one per PF; VFs share it)."""

    def __init__(self, capacity: int, *, supported: bool, pasid_required: bool) -> None:
        self.supported = supported
        self.enabled = False
        self.reset = False  # the Reset control bit reads back 0 (self-clearing)
        self.response_failure = False
        self.unexpected_prgi = False
        self.capacity = capacity
        self.allocation = 0
        self.outstanding = 0
        self.pasid_required = pasid_required
        self.functions: list[PciFunction] = []  # the PF first, then its VFs
        self.credit_waiters: deque[DmaTransfer] = deque()

    def __repr__(self) -> str:
        return (
            f"<PriCapability enabled={self.enabled} rf={self.response_failure} "
            f"uprgi={self.unexpected_prgi} outstanding={self.outstanding}/{self.allocation}>"
        )

    @property
    def stopped(self) -> bool:
        """Stopped: not issuing (Enable=0 or RF) and nothing outstanding."""
        return (not self.enabled or self.response_failure) and self.outstanding == 0

    @property
    def usable(self) -> bool:
        return self.supported and self.enabled and not self.response_failure

    @property
    def credits(self) -> int:
        return max(0, self.allocation - self.outstanding)

    @property
    def control(self) -> int:
        return PRI_CTRL_ENABLE if self.enabled else 0

    @property
    def status(self) -> int:
        return (
            (PRI_STATUS_RF if self.response_failure else 0)
            | (PRI_STATUS_UPRGI if self.unexpected_prgi else 0)
            | (PRI_STATUS_STOPPED if self.stopped else 0)
            | (PRI_STATUS_PASID_REQUIRED if self.pasid_required else 0)
        )

    def enable(self, reqs: int) -> None:
        """``pci_enable_pri``: EBUSY unless disabled and stopped; Allocation = min(cap, reqs)."""
        if not self.supported:
            raise PriError("EOPNOTSUPP", "function has no PRI capability")
        if self.enabled or not self.stopped:
            raise PriError("EBUSY", "PRI must be disabled and stopped before enabling")
        if reqs < 1:
            raise PriError("EINVAL", "outstanding page request allocation must be >= 1")
        self.allocation = min(self.capacity, reqs)
        self.enabled = True

    def disable(self) -> None:
        """Clear Enable. Requests already sent still complete (responses are accepted)."""
        self.enabled = False

    def do_reset(self) -> None:
        """Set the Reset bit (``pci_reset_pri``): needs Enable=0; clears RF, UPRGI and the
        outstanding-request tracking (pending groups are forgotten, their transfers fail)."""
        if not self.supported:
            raise PriError("EOPNOTSUPP", "function has no PRI capability")
        if self.enabled:
            raise PriError("EBUSY", "PRI Reset needs Enable=0")
        self._clear_state()

    def write_status_w1c(self, bits: int) -> None:
        if bits & PRI_STATUS_RF:
            self.response_failure = False
        if bits & PRI_STATUS_UPRGI:
            self.unexpected_prgi = False

    def _clear_state(self) -> None:
        for fn in self.functions:
            fn._abandon_pri_work(_ST_FAILURE)
        self.response_failure = False
        self.unexpected_prgi = False
        self.outstanding = 0
        self.credit_waiters.clear()

    def _return_credits(self, n: int) -> None:
        self.outstanding -= n
        assert self.outstanding >= 0


class PciFunction:
    def __init__(
        self,
        spec: FunctionSpec,
        iommu: IommuUnit,
        fabric: Fabric,
        pf: PciFunction | None = None,
        *,
        atc_entries: int = 4096,
    ) -> None:
        self.rid = spec.rid
        self.sid = spec.rid.sid
        self.spec = spec
        self.iommu = iommu
        self.pf = pf
        self.vfs: list[PciFunction] = []
        self.present = True
        self.ats_enabled = False
        self.pasid_enabled = False
        # Insertion-ordered so that eviction of the oldest entry is O(1).
        self.atc: OrderedDict[tuple[int | None, int], tuple[int, int]] = OrderedDict()
        self.atc_entries = atc_entries
        self._counts = HotCounts(_HOT_COUNTERS)
        #: Where the function counts (``hwmodel.counting``): the per-fault counts and
        #: the rest; ``counters`` folds them for readers. A reader of one key that is
        #: never hot (``unexpected_prgi``) may read ``cold_counters`` without the fold.
        self.hot_counters = self._counts.hot
        self.cold_counters = self._counts.cold
        self._fabric = fabric
        self._own_pri: PriCapability | None = None
        # The PRI capability this function uses (its own, or its PF's), resolved once:
        # it never changes, and the DMA engine reads it on every miss and answer.
        self._pri: PriCapability
        if pf is None:
            own = PriCapability(
                spec.pri_capacity if spec.pri else 0, supported=spec.pri, pasid_required=spec.pasid
            )
            own.functions.append(self)
            self._own_pri = self._pri = own
        else:
            pf.vfs.append(self)
            pf.pri.functions.append(self)
            self._pri = pf.pri
        self._groups: dict[int, PageRequestGroup] = {}
        self._next_prgi = 0
        self._cancelled_prgis: set[int] = set()
        self._injected: dict[int, int] = {}  # PRGIs of injected groups awaiting a response
        self._transfers: dict[int, DmaTransfer] = {}

    def __repr__(self) -> str:
        return f"<PciFunction {self.rid} {self.spec.name}>"

    @property
    def counters(self) -> Counter[str]:
        """Everything this function counted (the hot counts folded in)."""
        return self._counts.folded()

    # ------------------------------------------------------------------ capabilities
    @property
    def pri(self) -> PriCapability:
        """The PRI capability; a VF returns its PF's (PRI is a PF resource)."""
        return self._pri

    @property
    def is_vf(self) -> bool:
        return self.pf is not None

    def enable_pasid(self) -> None:
        if not self.spec.pasid:
            raise PciError("EOPNOTSUPP", f"{self.rid} has no PASID capability")
        self.pasid_enabled = True

    def disable_pasid(self) -> None:
        self.pasid_enabled = False

    def enable_ats(self) -> None:
        if not self.spec.ats:
            raise PciError("EOPNOTSUPP", f"{self.rid} has no ATS capability")
        self.ats_enabled = True

    def disable_ats(self) -> None:
        self.ats_enabled = False
        self.atc.clear()

    def enable_pri(self, reqs: int) -> None:
        """``pci_enable_pri``: on a VF succeeds only if the PF's PRI is enabled (no-op)."""
        if self.pf is not None:
            if not self.pri.enabled:
                raise PriError("EINVAL", f"VF {self.rid}: the PF's PRI is not enabled")
            return
        self.pri.enable(reqs)

    @property
    def outstanding_groups(self) -> int:
        return len(self._groups)

    def outstanding_prg_indices(self) -> list[int]:
        return sorted(self._groups)

    # ------------------------------------------------------------------ ATC
    def invalidate_atc(self, pasid: int | None, start: int, size: int, all_pasids: bool) -> int:
        """Execute an ATS invalidation request; returns entries removed."""
        self.cold_counters["atc_invalidations"] += 1
        atc = self.atc
        first, npages = start >> PAGE_SHIFT, size >> PAGE_SHIFT
        if not all_pasids and npages <= len(atc):
            keys = [(pasid, p) for p in range(first, first + npages) if (pasid, p) in atc]
        else:
            end = first + npages
            keys = [k for k in atc if (all_pasids or k[0] == pasid) and first <= k[1] < end]
        for k in keys:
            del atc[k]
        return len(keys)

    def _atc_insert(self, key: tuple[int | None, int], val: tuple[int, int]) -> None:
        atc = self.atc
        if key not in atc and len(atc) >= self.atc_entries:
            atc.popitem(last=False)
            self.cold_counters["atc_evictions"] += 1
        atc[key] = val

    def _translate(
        self, pasid: int | None, addr: int, access: int
    ) -> tuple[bool, int, int, bool, str]:
        """One access through the ATC (ATS enabled) or the IOMMU, as the IOMMU's
        ``translate_access`` tuple: ``(ok, addr, perm, table_fault, reason)``."""
        c = self.hot_counters
        if self.ats_enabled:
            page = addr >> PAGE_SHIFT
            hit = self.atc.get((pasid, page))
            if hit is not None and access & ~int(hit[1]) == 0:
                c["atc_hits"] += 1
                return True, hit[0] << PAGE_SHIFT | (addr & PAGE_MASK), hit[1], False, ""
            c["atc_misses"] += 1
            c["ats_translation_requests"] += 1
            tr = self.iommu.translate_access(self.sid, pasid, addr, access)
            if tr[0] or tr[4] == "permission":
                self._atc_insert((pasid, page), (tr[1] >> PAGE_SHIFT, tr[2]))
            return tr
        c["untranslated_requests"] += 1
        return self.iommu.translate_access(self.sid, pasid, addr, access)

    # ------------------------------------------------------------------ DMA engine
    def _begin(self, t: DmaTransfer) -> None:
        t._function = self
        self._transfers[t.id] = t
        self.hot_counters["dma_started"] += 1
        self._run(t)

    def _run(self, t: DmaTransfer) -> None:
        """Walk pages from the cursor until done or waiting for the IOMMU."""
        if t.status is not None:
            return
        t._state = _RUNNING
        end = t.iova + t.length
        pasid = t.pasid
        access = int(t.perm)
        translate = self._translate
        while t._next < end:
            addr = t._next
            if translate(pasid, addr, access)[0]:
                nxt = (addr | PAGE_MASK) + 1
                if nxt > end:  # noqa: PLR1730 - min() is a call, once per page
                    nxt = end
                t.bytes += nxt - addr
                t._next = nxt
                t._successes = 0
                continue
            if t._successes > self._fabric.max_retries:
                self._finish(t, _ST_RETRY_LIMIT)
                return
            pri = self._pri
            if not (pri.supported and pri.enabled and self.ats_enabled):
                self._finish(t, _ST_NO_PRI)
                return
            if pri.response_failure:
                self._finish(t, _ST_FAILURE)
                return
            self._issue_group(t, pri, addr, end)
            return
        self._finish(t, _ST_OK)

    def _issue_group(self, t: DmaTransfer, pri: PriCapability, addr: int, end: int) -> None:
        fabric = self._fabric
        credits = pri.allocation - pri.outstanding
        prgi = self._free_prgi() if credits > 0 else None
        if prgi is None:
            t._state = _WAIT_CREDITS
            pri.credit_waiters.append(t)
            self.cold_counters["pri_credit_stalls"] += 1
            return
        first = addr >> PAGE_SHIFT
        span = ((end - 1) >> PAGE_SHIFT) - first + 1  # pages left in the transfer
        n = 1
        p = int(t.perm)
        if span > 1:
            limit = min(fabric.prg_max_pages, credits, span)
            # Group further consecutive pages of the transfer that miss too.
            while n < limit and not self._translate(t.pasid, (first + n) << PAGE_SHIFT, p)[0]:
                n += 1
        pp = t.pasid is not None
        rd = p & 5 != 0 or p & 2 == 0  # READ, or EXEC (needs read), or PRIV alone
        wr = p & 2 != 0
        ex = p & 4 != 0
        pm = p & 8 != 0
        pasid = t.pasid if t.pasid is not None else 0
        sid = self.sid
        post = fabric.post
        for i in range(n):
            post(
                self,
                # positional (sid, pasid_present, pasid, exe, pm, rd, wr, lpig, prgi, addr)
                PageRequestDescriptor(
                    sid, pp, pasid, ex, pm, rd, wr, i == n - 1, prgi, (first + i) << PAGE_SHIFT
                ),
            )
        g = PageRequestGroup(prgi, t.pasid, first, n, t, fabric.now)
        self._groups[prgi] = g
        if self._cancelled_prgis:
            self._cancelled_prgis.discard(prgi)
        pri.outstanding += n
        t._group = g
        t._state = _WAIT_RESPONSE
        t.faults += n
        c = self.hot_counters
        c["page_requests"] += n
        c["page_request_groups"] += 1

    def _free_prgi(self) -> int | None:
        groups = self._groups
        if len(groups) >= PRGI_COUNT:
            return None
        i = self._next_prgi
        while i in groups:
            i = (i + 1) % PRGI_COUNT
        self._next_prgi = (i + 1) % PRGI_COUNT
        return i

    def _finish(self, t: DmaTransfer, status: DmaStatus) -> None:
        if t.status is not None:
            return
        g = t._group
        if g is not None:
            self._drop_group(g)
        t.status = status
        t._state = _DONE
        t.finished_ns = self._fabric.now
        self._transfers.pop(t.id, None)
        key = _COMPLETED_KEYS[status._value_]
        if key == "dma_completed_ok":
            self.hot_counters[key] += 1
        else:
            self.cold_counters[key] += 1
        self._fabric.complete(t)

    def _drop_group(self, g: PageRequestGroup) -> None:
        """Forget an outstanding group (terminal condition): credits back, late
        responses for its index are discarded silently (SPEC 7.9)."""
        if self._groups.get(g.prg_index) is g:
            del self._groups[g.prg_index]
            self._cancelled_prgis.add(g.prg_index)
            self._pri._return_credits(g.npages)
            if self._pri.credit_waiters:
                self._wake_credit_waiters()
        g.transfer._group = None

    def _abandon_pri_work(self, status: DmaStatus) -> None:
        """End every transfer of this function that waits on PRI (response or credits)."""
        for t in list(self._transfers.values()):
            if t._state in (_WAIT_RESPONSE, _WAIT_CREDITS):
                self._finish(t, status)

    def _wake_credit_waiters(self) -> None:
        pri = self.pri
        now = self._fabric.now
        while pri.credit_waiters and pri.credits > 0:
            t = pri.credit_waiters.popleft()
            if t._state == _WAIT_CREDITS and t.status is None:
                self._fabric.schedule(t, now)

    # ------------------------------------------------------------------ responses
    def receive_page_response(self, desc: PageGroupResponseDescriptor) -> None:
        """A PRG Response message from the root complex (PCIe 10.4.2)."""
        self.receive_prg_response(desc.prg_index, desc.response_code)

    def receive_prg_response(self, prgi: int, rc: int) -> None:
        """A PRG Response message: its PRG index and response code are all the
        function acts on."""
        hot = self.hot_counters
        hot["page_responses_received"] += 1
        pri = self._pri
        if pri.response_failure:
            self.cold_counters["page_responses_ignored_rf"] += 1
            return
        g = self._groups.pop(prgi, None)
        if g is None:
            if self._injected.get(prgi, 0) > 0:
                self._injected[prgi] -= 1
                hot["page_responses_to_injected"] += 1
            elif prgi in self._cancelled_prgis:
                self._cancelled_prgis.discard(prgi)
                self.cold_counters["page_responses_discarded"] += 1
            else:
                pri.unexpected_prgi = True
                self.cold_counters["unexpected_prgi"] += 1
            return
        pri.outstanding -= g.npages  # ``_return_credits``, inline
        assert pri.outstanding >= 0
        t = g.transfer
        t._group = None
        if t.status is not None:
            # The driver stopped the transfer meanwhile (``_stop_dma``): the answer only
            # settles the requests it had sent, and returns their credits.
            self.cold_counters["page_responses_after_stop"] += 1
            if pri.credit_waiters:
                self._wake_credit_waiters()
            return
        fabric = self._fabric
        if rc == RESP_SUCCESS:
            hot["page_responses_success"] += 1
            t._successes += 1
            t.retries += 1
            hot["retries"] += 1
            k = t._successes
            delay = (
                0
                if k == 1
                else min(fabric.retry_backoff_ns << (k - 2), fabric.retry_backoff_max_ns)
            )
            fabric.schedule(t, fabric.now + delay)
        elif rc == RESP_INVALID:
            self.cold_counters["page_responses_invalid"] += 1
            self._finish(t, _ST_INVALID)
        else:
            # 0xF, or a reserved code (treated as Response Failure): PRI stops.
            self.cold_counters["page_responses_failure"] += 1
            if rc != 0xF:
                self.cold_counters["page_responses_reserved_code"] += 1
            pri.response_failure = True
            self._finish(t, _ST_FAILURE)
            for fn in pri.functions:
                fn._abandon_pri_work(_ST_FAILURE)
            pri.credit_waiters.clear()
            return
        if pri.credit_waiters:
            self._wake_credit_waiters()

    # ------------------------------------------------------------------ lifecycle
    def _stop_dma(self, status: DmaStatus) -> None:
        """The driver stops the function's DMA (vtd-hw.md 6.4, step 1 of a removal):
        every transfer ends with ``status``, but the page requests already sent stay
        outstanding, holding their credits, until the drain answers them."""
        for t in list(self._transfers.values()):
            t._group = None  # the group stays in self._groups until it is answered
            self._finish(t, status)

    def _remove(self) -> None:
        for t in list(self._transfers.values()):
            self._finish(t, _ST_REMOVED)
        self.present = False
        self.atc.clear()
        self._injected.clear()
        if self._own_pri is not None:
            self._own_pri.enabled = False

    def _plug(self) -> None:
        self.present = True
        self.ats_enabled = False
        self.pasid_enabled = False
        self.atc.clear()
        self._groups.clear()
        self._cancelled_prgis.clear()
        self._injected.clear()
        self._next_prgi = 0
        if self._own_pri is not None:
            p = self._own_pri
            p.enabled = False
            p.response_failure = p.unexpected_prgi = False
            p.outstanding = 0
            p.allocation = 0
            p.credit_waiters.clear()

    def _flr(self) -> None:
        for t in list(self._transfers.values()):
            self._finish(t, _ST_FAILURE)
        self.atc.clear()
        if self._own_pri is not None:
            p = self._own_pri
            p.enabled = False
            p._clear_state()
            p.allocation = 0


def page_count(iova: int, length: int) -> int:
    """Number of 4 KiB pages the byte range touches."""
    if length <= 0:
        return 0
    return ((iova + length - 1) >> PAGE_SHIFT) - (iova >> PAGE_SHIFT) + 1


__all__ = [
    "PAGE_SIZE",
    "DmaStatus",
    "DmaTransfer",
    "PciError",
    "PciFunction",
    "PriCapability",
    "PriError",
]
