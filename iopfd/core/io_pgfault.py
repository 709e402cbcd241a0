"""The fault path (``drivers/iommu/io-pgfault.c``), after seed 004. Architecture-neutral:
it knows devices, attach handles and fault queues, and reaches the driver only through
its ops (``IommuDriver.page_response``), as the kernel does.

``IopfQueue.report`` reads top to bottom as ``iommu_report_device_fault`` and Jason
Gunthorpe's eight steps:

- ``find_fault_handler`` first, for every request, last or not: the attach handle of
  (device, PASID) by one dict read, no lock (seed 003). No fault-capable attachment:
  ``iopf_error_response`` answers INVALID at once and nothing is set aside
  (PROTOCOL.md v2 item 4);
1. one allocation per request: the fault record tuple (the group is the only other);
2. the device's fault state is the ``Device`` the driver found by dict lookup
   (seed 000), with no lock and no search;
3. nothing here takes a lock that detach or unbind could hold (seed 003): the core is
   single-threaded and sans-IO, so every lookup is a plain dict read;
4. a request without LAST_PAGE is set aside on the device's partial list and we return;
5. the last request assembles the group: the partials of the same group index *and
   PASID* in arrival order, the last one last (the kernel compares the index alone);
6. the group goes to the handler, the fault queue of the HWPT (``iommufd_fault_iopf_handler``),
   which counts it pending on its domain;
7. the *group* is queued whole under a fresh cookie;
8. the answer finds the group by (fault queue, cookie), never by a list search.

A group is owned by exactly one place at a time (``IopfGroup.state``): its fault queue
while pending, nobody once answered; every answer goes through ``group_response``,
which answers only a pending group, so a second answer is impossible by construction
(the ownership the kernel gets from ``iopf_group_take_ownership``, proposed after 6.18).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hwmodel import RESP_INVALID

if TYPE_CHECKING:
    from collections import Counter

    from iopfd.core.errors import CoreLimits
    from iopfd.core.events import EventSink
    from iopfd.core.iommu import AttachHandle, Device, IommuDriver

# struct iommu_hwpt_pgfault flags, copied raw from the kernel's ``iommu_fault_page_request``
PASID_VALID = 1
LAST_PAGE = 2
#: ``IOMMU_FAULT_PAGE_RESPONSE_NEEDS_PASID``: ``intel_prq_report`` sets it with
#: PASID_VALID on every request that had a PASID, and iommufd copies ``flags`` raw.
NEEDS_PASID = 4

# A fault record: (flags, pasid, grpid, perm, addr); a tuple, the cheapest object.
Fault = tuple[int, int, int, int, int]

PENDING = 0
ANSWERED = 1


class IopfParam:
    """``struct iommu_fault_param``: a device's requests set aside until their last."""

    __slots__ = ("n_partials", "partials")

    def __init__(self) -> None:
        self.partials: dict[int, list[Fault]] = {}  # grpid -> non-last requests, in order
        self.n_partials = 0


class IopfGroup:
    """A completed page-request group (``struct iopf_group``)."""

    __slots__ = ("attach", "cookie", "dev", "faults", "state", "t_ns")

    def __init__(self, dev: Device, faults: list[Fault], attach: AttachHandle, t_ns: int) -> None:
        self.dev = dev
        self.faults = faults  # arrival order; the LAST_PAGE one last
        self.attach = attach
        self.cookie = 0  # given by the fault queue that takes it
        self.t_ns = t_ns
        self.state = PENDING

    @property
    def last(self) -> Fault:
        return self.faults[-1]


def fault_pasid(flags: int, pasid: int) -> int | None:
    return pasid if flags & PASID_VALID else None


class IopfQueue:
    """``struct iopf_queue``: the fault path between the driver's PRQ thread and the
    fault queues, with the counters and the sink it reports to."""

    __slots__ = ("counters", "driver", "hot", "limits", "sink")

    def __init__(
        self, counters: Counter[str], limits: CoreLimits, sink: EventSink, hot: dict[str, int]
    ) -> None:
        self.counters = counters
        self.hot = hot  # the per-fault counts, folded into ``counters`` (``Core.counters``)
        self.limits = limits
        self.sink = sink
        self.driver: IommuDriver | None = None  # set once the driver exists

    # ------------------------------------------------------------------ report
    def report(self, dev: Device, fault: Fault, now: int) -> None:
        """``iommu_report_device_fault``: one request from the driver's PRQ thread."""
        flags, pasid, grpid = fault[0], fault[1], fault[2]

        # find_fault_handler, for every request (last or not).
        attach = dev.handles.get(pasid if flags & PASID_VALID else None)
        fq = attach.fault if attach is not None else None
        if attach is None or fq is None:
            self._error_response(dev, flags, pasid, grpid, now)
            if flags & LAST_PAGE:
                # The group's set-aside requests were answered with it; the kernel
                # leaves them for the next group with this index, iopfd frees them.
                self.discard_group_partials(dev, grpid)
            return

        # Step 4: not the last request of its group: set it aside and return.
        param = dev.fault_param
        if not flags & LAST_PAGE:
            if param.n_partials >= self.limits.max_partials_per_device:
                self.counters["partials_dropped"] += 1
                return
            partial = param.partials.get(grpid)
            if partial is None:
                param.partials[grpid] = [fault]
            else:
                partial.append(fault)
            param.n_partials += 1
            return

        # Step 5: the last request completes the group, partials in arrival order.
        faults = self._take_partials(param, grpid, flags, pasid) if param.n_partials else None
        if faults is None:
            faults = [fault]
        else:
            faults.append(fault)
        self.hot["groups"] += 1

        # Steps 6-7: the handler queues it, or says how to answer at once.
        group = IopfGroup(dev, faults, attach, now)
        code = fq.iopf_handler(group, now)
        if code is not None:
            self.group_response(group, code)

    def _error_response(self, dev: Device, flags: int, pasid: int, grpid: int, now: int) -> None:
        """``err_bad_iopf``: no fault-capable attachment for this request's (device,
        PASID): ``iopf_error_response`` answers INVALID now, last request or not (the
        function then sees extra responses for the PRG index, PCIe's unexpected-PRGI
        case). It counts as a group of one request, answered by the daemon."""
        assert self.driver is not None
        self.driver.page_response(
            dev, bool(flags & PASID_VALID), pasid, grpid, RESP_INVALID, bool(flags & LAST_PAGE)
        )
        counters = self.counters
        counters["groups"] += 1
        counters["auto_responses"] += 1
        counters["no_handler_responses"] += 1
        if not flags & LAST_PAGE:
            counters["no_handler_partial_responses"] += 1
        if self.sink.trace_enabled:
            self.sink.trace(
                "auto_response",
                rid=dev.name,
                pasid=fault_pasid(flags, pasid),
                grpid=grpid,
                code=RESP_INVALID,
                reason="no_handler",
                last=bool(flags & LAST_PAGE),
                t_ns=now,
            )

    def _take_partials(
        self, param: IopfParam, grpid: int, flags: int, pasid: int
    ) -> list[Fault] | None:
        """Step 5: the set-aside requests of this group: same index *and* same PASID, in
        arrival order. The kernel matches the index alone; a request of another PASID
        under the same index is left over from an earlier group (a function has one
        group per index outstanding) and is freed here, never delivered in this group."""
        partial = param.partials.pop(grpid, None)
        if partial is None:
            return None
        param.n_partials -= len(partial)
        key = flags & PASID_VALID
        same = [f for f in partial if f[1] == pasid and f[0] & PASID_VALID == key]
        stale = len(partial) - len(same)
        if stale:
            self.counters["partials_discarded"] += stale
        return same or None

    # ------------------------------------------------------------------ answers
    def group_response(self, group: IopfGroup, code: int) -> None:
        """``iopf_group_response``: the single place a group is answered; only a pending
        group is (a second answer is counted, never sent). The response carries the
        RID, PASID and PRG index of the group's last request."""
        if group.state != PENDING:  # unreachable by construction
            self.counters["double_answers_prevented"] += 1
            return
        group.state = ANSWERED
        last = group.faults[-1]
        assert self.driver is not None
        self.driver.page_response(group.dev, bool(last[0] & PASID_VALID), last[1], last[2], code)

    # ------------------------------------------------------------------ partials
    def discard_group_partials(self, dev: Device, grpid: int) -> int:
        """Free the set-aside requests of one group (its last request was answered)."""
        param = dev.fault_param
        faults = param.partials.pop(grpid, None)
        if not faults:
            return 0
        param.n_partials -= len(faults)
        self.counters["partials_discarded"] += len(faults)
        return len(faults)

    def discard_partial(self, dev: Device, pasid: int | None) -> int:
        """Free the set-aside requests of one PASID of ``dev``."""
        param = dev.fault_param
        if not param.n_partials:
            return 0
        dropped = 0
        for grpid in list(param.partials):
            faults = param.partials[grpid]
            keep = [f for f in faults if fault_pasid(f[0], f[1]) != pasid]
            dropped += len(faults) - len(keep)
            if keep:
                param.partials[grpid] = keep
            else:
                del param.partials[grpid]
        param.n_partials -= dropped
        self.counters["partials_discarded"] += dropped
        return dropped

    def remove_device(self, dev: Device) -> int:
        """``iopf_queue_remove_device`` (and ``iopf_queue_discard_partial`` for one
        device): every set-aside request of ``dev`` goes. Its pending groups belong to
        their fault queues, which answer them (exactly-once ownership)."""
        param = dev.fault_param
        dropped = param.n_partials
        if dropped:
            param.partials.clear()
            param.n_partials = 0
            self.counters["partials_discarded"] += dropped
        return dropped


__all__ = [
    "LAST_PAGE",
    "NEEDS_PASID",
    "PASID_VALID",
    "Fault",
    "IopfGroup",
    "IopfParam",
    "IopfQueue",
    "fault_pasid",
]
