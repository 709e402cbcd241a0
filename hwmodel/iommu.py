"""One VT-d unit: scalable-mode context and PASID entries, the IOTLB, the page request
queue with its registers and Table 31 automatic responses, and the invalidation queue.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hwmodel.counting import HotCounts
from hwmodel.descriptors import (
    RESP_INVALID,
    RESP_SUCCESS,
    PageGroupResponseDescriptor,
    PageRequestDescriptor,
)
from hwmodel.iq import InvalidationQueue
from hwmodel.pagetable import PageTable
from hwmodel.prq import PageRequestQueue
from hwmodel.rid import PAGE_MASK, PAGE_SHIFT, Perm, perm_of
from hwmodel.topology import IommuSpec

PRS_PPR = 1  # PRS_REG bit 0: pending page request
PRS_PRO = 2  # PRS_REG bit 1: page request overflow
PECTL_IM = 1 << 31
PECTL_IP = 1 << 30

RID_PASID = 0  # the PASID table slot used for requests without PASID (IOMMU_NO_PASID)

# Permissions as plain ints, as the page tables keep them (hwmodel/pagetable.py).
_RW = int(Perm.READ | Perm.WRITE)
_S1_ONLY = int(Perm.EXEC | Perm.PRIV)
_NO_PERM = 0


class Pgtt(enum.IntEnum):
    """PASID-granular translation type of a scalable-mode PASID entry."""

    FIRST_STAGE = 1
    SECOND_STAGE = 2
    NESTED = 3
    PASS_THROUGH = 4


# Members as module constants: a class attribute of an enum is a slower load.
_FIRST_STAGE = Pgtt.FIRST_STAGE
_SECOND_STAGE = Pgtt.SECOND_STAGE
_NESTED = Pgtt.NESTED
_PASS_THROUGH = Pgtt.PASS_THROUGH


@dataclass
class PasidEntry:
    """Scalable-mode PASID-table entry. ``s1``: first-stage table (iova -> gpa/hpa);
    ``s2``: second-stage table (gpa -> hpa)."""

    present: bool
    did: int
    pgtt: Pgtt
    s1: PageTable | None = None
    s2: PageTable | None = None


@dataclass(frozen=True)
class ContextEntry:
    """Scalable-mode context entry bits that matter here: P and PRE."""

    present: bool
    pre: bool


@dataclass(slots=True)
class Translation:
    """The result of one translation: a value (not frozen only for speed: two a DMA page)."""

    ok: bool
    addr: int
    perm: Perm
    table_fault: bool  # no present context/PASID entry (a remapping-table error)
    reason: str = ""  # why not ok: "", "not_mapped", "permission", or a table-fault reason


@dataclass(frozen=True)
class FaultRecord:
    """A non-recoverable fault the unit logged (fault recording registers)."""

    sid: int
    pasid: int | None
    addr: int
    reason: str
    fault_code: int


class Endpoint(Protocol):
    """What the unit needs of a PCI function behind it (routing by SID)."""

    @property
    def present(self) -> bool: ...

    def receive_page_response(self, desc: PageGroupResponseDescriptor) -> None: ...

    def receive_prg_response(self, prgi: int, rc: int) -> None: ...

    def invalidate_atc(self, pasid: int | None, start: int, size: int, all_pasids: bool) -> int: ...


# Fault reasons for remapping-table errors (SPEC Table 30 codes where vtd-hw.md gives them).
_FR_CONTEXT = ("context_not_present", 0x30)
_FR_PRE = ("pre_clear", 0x47)
_FR_PASID_WIDE = ("pasid_too_wide", 0x46)
_FR_RID_PASID = ("pasid_is_rid_pasid", 0x48)
_FR_PASID_ENTRY = ("pasid_entry_not_present", 0x59)
_FR_BAD_ENTRY = ("pasid_entry_invalid", 0x5A)

#: What a unit and its IQ count on every fault (``hwmodel.counting``).
_HOT_COUNTERS = dict.fromkeys(
    (
        "iotlb_hits",
        "iotlb_misses",
        "translation_faults",
        "page_requests_received",
        "prq_writes",
        "prq_interrupts",
        "iq_descriptors_page_group_response",
        "iq_descriptors_wait",
        "iq_wait_status_writes",
    ),
    0,
)

_IotlbKey = tuple[int | None, int]  # (PASID tag or None for DID-only, page)
_IotlbVal = tuple[int, int, Pgtt]  # (target page, perm as an int, pgtt)


class IommuUnit:
    def __init__(
        self, spec: IommuSpec, *, iotlb_entries: int = 4096, fault_log_entries: int = 256
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self._counts = HotCounts(_HOT_COUNTERS)
        #: Where the unit and its IQ count (``hwmodel.counting``): the per-fault counts
        #: and the rest; ``counters`` folds them for readers.
        self.hot_counters = self._counts.hot
        self.cold_counters = self._counts.cold
        self.prq = PageRequestQueue(spec.prq_order)
        self.iq = InvalidationQueue(self, spec.iq_entries)
        self.endpoints: dict[int, Endpoint] = {}
        self.irq_pending = False
        # Where the unit reports that its event fired (the machine's list), if anywhere.
        self.irq_queue: list[IommuUnit] | None = None
        self.fault_log: deque[FaultRecord] = deque(maxlen=fault_log_entries)
        self.auto_responses: deque[PageGroupResponseDescriptor] = deque(maxlen=256)
        # called by a wait descriptor with PD=1: deliver every posted page request
        self.drain_hook: Callable[[IommuUnit], None] | None = None
        # An observer of every page group response the IQ executes (tests, tracing);
        # with none set the response path builds no descriptor object.
        self.response_tap: Callable[[PageGroupResponseDescriptor], None] | None = None
        self.iotlb_entries = iotlb_entries
        self._contexts: dict[int, ContextEntry] = {}
        self._pasid_entries: dict[tuple[int, int | None], PasidEntry] = {}
        # (sid, pasid) -> the entry ``_entry_for`` found usable for a translation, until
        # the next write to a context or PASID entry: the tables are read as they are,
        # and the checks run once per (sid, pasid) and table change, not per access.
        self._valid_entries: dict[tuple[int, int | None], PasidEntry] = {}
        self._valid_pr_entries: dict[tuple[int, int | None], PasidEntry] = {}  # + PRE set
        # Buckets keep insertion order and evict their oldest entry in O(1).
        self._iotlb: dict[int, OrderedDict[_IotlbKey, _IotlbVal]] = {}
        self._iotlb_size = 0
        self._nested_dids: set[int] = set()
        self._prs = 0
        self._pectl_im = False  # the driver unmasks the PRQ event when it enables the PRQ
        self._pectl_ip = False

    def __repr__(self) -> str:
        return f"<IommuUnit {self.name}>"

    @property
    def counters(self) -> Counter[str]:
        """Everything this unit (and its IQ) counted, the hot counts folded in."""
        return self._counts.folded()

    # ------------------------------------------------------------------ tables
    def set_context(self, sid: int, *, present: bool, pre: bool) -> None:
        """Program the scalable-mode context entry of ``sid`` (PRE: page requests enabled)."""
        self._contexts[sid] = ContextEntry(present, pre)
        self._invalidate_valid_entries()

    def _invalidate_valid_entries(self) -> None:
        """A context or PASID entry was written: every entry is checked afresh."""
        self._valid_entries.clear()
        self._valid_pr_entries.clear()

    def context(self, sid: int) -> ContextEntry | None:
        return self._contexts.get(sid)

    def set_pasid_entry(self, sid: int, pasid: int | None, entry: PasidEntry | None) -> None:
        """Write (or, with None, clear) the PASID entry; ``pasid=None`` is RID_PASID."""
        if pasid is not None and not 0 <= pasid < 1 << self.spec.pasid_bits:
            raise ValueError(f"{self.name}: PASID {pasid:#x} exceeds {self.spec.pasid_bits} bits")
        if entry is None:
            self._pasid_entries.pop((sid, pasid), None)
        else:
            self._pasid_entries[(sid, pasid)] = entry
        self._invalidate_valid_entries()

    def pasid_entry(self, sid: int, pasid: int | None) -> PasidEntry | None:
        return self._pasid_entries.get((sid, pasid))

    def clear_pasid_present(self, sid: int, pasid: int | None) -> None:
        """Clear only P, keeping DID/PGTT for in-flight walks (intel_pasid_tear_down_entry)."""
        e = self._pasid_entries.get((sid, pasid))
        if e is not None:
            e.present = False
            self._invalidate_valid_entries()

    def _entry_for(
        self, sid: int, pasid: int | None, page_request: bool
    ) -> tuple[PasidEntry | None, tuple[str, int] | None]:
        ctx = self._contexts.get(sid)
        if ctx is None or not ctx.present:
            return None, _FR_CONTEXT
        if page_request and not ctx.pre:
            return None, _FR_PRE
        if pasid is not None:
            if pasid >> self.spec.pasid_bits:
                return None, _FR_PASID_WIDE
            if pasid == RID_PASID:
                return None, _FR_RID_PASID
        e = self._pasid_entries.get((sid, pasid))
        if e is None or not e.present:
            return None, _FR_PASID_ENTRY
        pgtt = e.pgtt
        if pgtt == _SECOND_STAGE:
            bad = e.s2 is None
        elif pgtt == _NESTED:
            bad = not self.spec.nest or e.s1 is None or e.s2 is None
        else:
            bad = pgtt == _FIRST_STAGE and e.s1 is None
        return (None, _FR_BAD_ENTRY) if bad else (e, None)

    # ------------------------------------------------------------------ translation
    def translate(self, sid: int, pasid: int | None, iova: int, perm: Perm) -> Translation:
        """Translate one access (an ATS translation request or an untranslated DMA)."""
        ok, addr, tperm, table_fault, reason = self.translate_access(sid, pasid, iova, int(perm))
        return Translation(ok, addr, perm_of(tperm), table_fault, reason)

    def translate_access(
        self, sid: int, pasid: int | None, iova: int, access: int
    ) -> tuple[bool, int, int, bool, str]:
        """``translate`` as a plain tuple ``(ok, addr, perm, table_fault, reason)``, the
        access as an int: what the DMA engine calls twice a faulting page, where a
        ``Translation`` object and enum arithmetic would cost more than the lookup."""
        c = self.hot_counters
        e = self._valid_entries.get((sid, pasid))
        if e is None:
            e, fault = self._entry_for(sid, pasid, False)
            if e is None:
                assert fault is not None
                self.cold_counters["translation_table_faults"] += 1
                self._log_fault(sid, pasid, iova, fault)
                return False, 0, _NO_PERM, True, fault[0]
            self._valid_entries[(sid, pasid)] = e
        page = iova >> PAGE_SHIFT
        pgtt = e.pgtt
        tag = (
            None
            if pgtt in (_SECOND_STAGE, _PASS_THROUGH)
            else (RID_PASID if pasid is None else pasid)
        )
        bucket = self._iotlb.get(e.did)
        hit = bucket.get((tag, page)) if bucket is not None else None
        if hit is not None and access & ~int(hit[1]) == 0:
            c["iotlb_hits"] += 1
            return True, hit[0] << PAGE_SHIFT | (iova & PAGE_MASK), hit[1], False, ""
        c["iotlb_misses"] += 1
        if pgtt == _SECOND_STAGE:
            assert e.s2 is not None
            walked = e.s2.lookup_page(page)
        else:
            walked = self._walk(e, page)
        if walked is None:
            c["translation_faults"] += 1
            return False, 0, _NO_PERM, False, "not_mapped"
        tpage, tperm = walked
        self._iotlb_insert(e.did, (tag, page), (tpage, tperm, pgtt))
        addr = tpage << PAGE_SHIFT | (iova & PAGE_MASK)
        if access & ~int(tperm):
            c["translation_faults"] += 1
            return False, addr, tperm, False, "permission"
        return True, addr, tperm, False, ""

    @staticmethod
    def _walk(e: PasidEntry, page: int) -> tuple[int, int] | None:
        pgtt = e.pgtt
        if pgtt == _PASS_THROUGH:
            return page, _RW
        if pgtt == _SECOND_STAGE:
            assert e.s2 is not None
            return e.s2.lookup_page(page)
        assert e.s1 is not None
        s1 = e.s1.lookup_page(page)
        if s1 is None or pgtt == _FIRST_STAGE:
            return s1
        assert e.s2 is not None
        s2 = e.s2.lookup_page(s1[0])
        if s2 is None:
            return None
        # Nested: R/W are the intersection of both stages; X and PRIV exist only in stage 1.
        return s2[0], (s1[1] & s2[1] & _RW) | (s1[1] & _S1_ONLY)

    def _iotlb_insert(self, did: int, key: _IotlbKey, val: _IotlbVal) -> None:
        bucket = self._iotlb.get(did)
        if bucket is None:
            bucket = self._iotlb[did] = OrderedDict()
        if key not in bucket:
            if self._iotlb_size >= self.iotlb_entries:
                self._iotlb_evict_one(bucket)
            self._iotlb_size += 1
        bucket[key] = val
        if val[2] == _NESTED:
            self._nested_dids.add(did)

    def _iotlb_evict_one(self, prefer: OrderedDict[_IotlbKey, _IotlbVal]) -> None:
        victim = prefer if prefer else next(b for b in self._iotlb.values() if b)
        victim.popitem(last=False)
        self._iotlb_size -= 1
        self.cold_counters["iotlb_evictions"] += 1

    @property
    def iotlb_size(self) -> int:
        return self._iotlb_size

    def iotlb_cached(self, did: int, pasid_tag: int | None, page: int) -> bool:
        """Whether the IOTLB holds a translation (for tests and introspection)."""
        return (pasid_tag, page) in self._iotlb.get(did, {})

    def _drop(self, bucket: dict[_IotlbKey, _IotlbVal], keys: list[_IotlbKey]) -> int:
        for k in keys:
            del bucket[k]
        self._iotlb_size -= len(keys)
        return len(keys)

    def inv_iotlb_global(self) -> int:
        n = self._iotlb_size
        self._iotlb.clear()
        self._nested_dids.clear()
        self._iotlb_size = 0
        return n

    def inv_iotlb_did(self, did: int, first: int | None = None, npages: int = 0) -> int:
        """IOTLB (type 2) by DID: second-stage and pass-through entries in the range (all if
        ``first`` is None) and, for a nested DID, every nested entry of that DID."""
        bucket = self._iotlb.get(did)
        if not bucket:
            return 0
        nested = did in self._nested_dids
        if first is None:
            keys = [k for k, v in bucket.items() if v[2] != _FIRST_STAGE]
        elif npages <= len(bucket):
            keys = [(None, p) for p in range(first, first + npages) if (None, p) in bucket]
            if nested:
                keys += [k for k, v in bucket.items() if v[2] == _NESTED]
        else:
            end = first + npages
            keys = [
                k
                for k, v in bucket.items()
                if (k[0] is None and first <= k[1] < end) or v[2] == _NESTED
            ]
        return self._drop(bucket, keys)

    def inv_iotlb_pasid(
        self, did: int, pasid: int, first: int | None = None, npages: int = 0
    ) -> int:
        """PASID-based IOTLB (type 6): entries tagged (DID, PASID), in range or all."""
        bucket = self._iotlb.get(did)
        if not bucket:
            return 0
        if first is not None and npages <= len(bucket):
            keys: list[_IotlbKey] = [
                (pasid, p) for p in range(first, first + npages) if (pasid, p) in bucket
            ]
        else:
            lo, hi = (0, 1 << 64) if first is None else (first, first + npages)
            keys = [k for k in bucket if k[0] == pasid and lo <= k[1] < hi]
        return self._drop(bucket, keys)

    # ------------------------------------------------------------------ PRQ registers
    def read_prs(self) -> int:
        return self._prs

    def write_prs_w1c(self, bits: int) -> None:
        self._prs &= ~bits & (PRS_PPR | PRS_PRO)
        if self._pectl_ip and not self._prs:
            self._pectl_ip = False  # SPEC 7.5: clearing PPR and PRO clears a pending IP

    def read_pectl(self) -> int:
        return (PECTL_IM if self._pectl_im else 0) | (PECTL_IP if self._pectl_ip else 0)

    def write_pectl(self, *, im: bool) -> None:
        self._pectl_im = im
        if not im and self._pectl_ip:
            self._fire_prq_event()

    def _set_prs(self, bit: int) -> None:
        before = self._prs
        self._prs |= bit
        if before:
            return  # PPR or PRO already set: no new event (SPEC 7.5)
        self._pectl_ip = True
        if not self._pectl_im:
            self._fire_prq_event()

    def _fire_prq_event(self) -> None:
        self._pectl_ip = False
        self.irq_pending = True
        if self.irq_queue is not None:
            self.irq_queue.append(self)
        self.hot_counters["prq_interrupts"] += 1

    # ------------------------------------------------------------------ page requests
    def receive_page_request(self, desc: PageRequestDescriptor) -> None:
        """A page request arrives from the link: Table 31, implicit invalidation, write."""
        hot = self.hot_counters
        hot["page_requests_received"] += 1
        pasid = desc.pasid if desc.pasid_present else None
        needs_response = desc.lpig and (desc.rd_req or desc.wr_req)  # not a stop marker
        e = self._valid_pr_entries.get((desc.sid, pasid))
        if e is None:
            e, fault = self._entry_for(desc.sid, pasid, True)
            if e is None:
                assert fault is not None
                self.cold_counters["table_faults"] += 1
                self._log_fault(desc.sid, pasid, desc.addr, fault)
                if needs_response:
                    self._auto_respond(desc, RESP_INVALID)
                return
            self._valid_pr_entries[(desc.sid, pasid)] = e
        if self._prs & PRS_PRO:
            self.cold_counters["prq_dropped"] += 1  # overflow already flagged: no action, no event
            if needs_response:
                self._auto_respond(desc, RESP_SUCCESS)
            return
        prq = self.prq
        if (prq._tail + 32) % prq.size_bytes == prq._head:  # full: N-1 slots used
            self.cold_counters["prq_overflows"] += 1
            self._set_prs(PRS_PRO)
            if needs_response:
                self._auto_respond(desc, RESP_SUCCESS)
            return
        if self._iotlb.get(e.did):
            self._implicit_invalidation(e, pasid, desc.addr >> PAGE_SHIFT)
        prq.hw_write(desc.encode())
        hot["prq_writes"] += 1
        if desc.lpig and not needs_response:
            self.cold_counters["prq_stop_markers"] += 1
        if self._prs:
            self._prs |= PRS_PPR  # PPR or PRO already set: no new event (SPEC 7.5)
        else:
            self._set_prs(PRS_PPR)

    def _implicit_invalidation(self, e: PasidEntry, pasid: int | None, page: int) -> None:
        # SPEC Table 27: the IOTLB entry for the faulting address is dropped before queuing.
        if e.pgtt == _SECOND_STAGE and e.did not in self._nested_dids:
            # ``inv_iotlb_did(did, page, 1)`` of a DID without nested entries: one key.
            bucket = self._iotlb.get(e.did)
            if bucket and bucket.pop((None, page), None) is not None:
                self._iotlb_size -= 1
        elif e.pgtt == _FIRST_STAGE:
            self.inv_iotlb_pasid(e.did, RID_PASID if pasid is None else pasid, page, 1)
        elif e.pgtt == _NESTED:
            self.inv_iotlb_did(e.did)
        else:
            self.inv_iotlb_did(e.did, page, 1)

    def _auto_respond(self, desc: PageRequestDescriptor, code: int) -> None:
        resp = PageGroupResponseDescriptor(
            sid=desc.sid,
            pasid_present=desc.pasid_present,
            pasid=desc.pasid if desc.pasid_present else 0,
            response_code=code,
            prg_index=desc.prg_index,
            lpig=True,
        )
        c = self.cold_counters
        c["hw_auto_responses"] += 1
        c["hw_auto_responses_success" if code == RESP_SUCCESS else "hw_auto_responses_invalid"] += 1
        self.auto_responses.append(resp)
        self.send_page_response(resp)

    def send_page_response(self, resp: PageGroupResponseDescriptor) -> None:
        """Format a PRG Response message toward the function named by the SID."""
        if self.response_tap is not None:
            self.response_tap(resp)
        self.send_prg_response(resp.sid, resp.prg_index, resp.response_code)

    def send_prg_response(self, sid: int, prg_index: int, response_code: int) -> None:
        """The PRG Response message itself (PCIe 10.4.2: RID, PRG index, code)."""
        ep = self.endpoints.get(sid)
        if ep is None or not ep.present:
            self.cold_counters["page_responses_to_absent"] += 1
            return
        ep.receive_prg_response(prg_index, response_code)

    def _log_fault(self, sid: int, pasid: int | None, addr: int, fault: tuple[str, int]) -> None:
        self.fault_log.append(FaultRecord(sid, pasid, addr, fault[0], fault[1]))
