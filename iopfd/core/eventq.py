"""Fault queues (``drivers/iommu/iommufd/eventq.c``, iommufd's FAULT object).

A fault queue holds the groups delivered to its client and not yet answered, keyed
by cookie: the answer finds its group in O(1) (seed 004 step 8). Unlike the kernel,
which reuses the lowest free cookie and assigns it at ``read()``, cookies start at 1,
only grow and are assigned at delivery, so a late answer can never land on a newer
group. At most ``max_pending`` groups are held; beyond that the handler answers
SUCCESS at once and counts the group throttled (the kernel's queue is unbounded).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from mypy_extensions import trait

from hwmodel import RESP_INVALID, RESP_SUCCESS
from iopfd.core.errors import EINVAL, ENOENT, CoreError
from iopfd.core.events import FaultDelivered
from iopfd.core.io_pgfault import PENDING, fault_pasid
from iopfd.core.main import (
    UINT32_MAX,
    ContextBase,
    IommufdObject,
    ObjectOps,
    register_object_ops,
)

if TYPE_CHECKING:
    from collections import Counter

    from iopfd.core.events import EventSink
    from iopfd.core.io_pgfault import IopfGroup, IopfQueue
    from iopfd.core.iommu import AttachHandle


class ResponseDeadlines:
    """When each delivered group's answer is due (``CoreLimits.response_timeout_ns``):
    a heap in delivery order, so a service pass looks at the head only. Answered
    groups leave it lazily; ``live`` counts the pending ones, and the heap is rebuilt
    whenever it holds more than twice that, so it never outgrows the pending groups
    (bounded by ``max_pending`` per queue and the budgets), whatever the answer order."""

    __slots__ = ("heap", "live", "seq", "timeout_ns")

    def __init__(self, timeout_ns: int) -> None:
        self.timeout_ns = timeout_ns
        self.heap: list[tuple[int, int, FaultQueue, IopfGroup]] = []
        self.live = 0
        self.seq = 0

    def push(self, fq: FaultQueue, group: IopfGroup, now: int) -> None:
        if self.timeout_ns > 0:
            self.seq += 1
            heapq.heappush(self.heap, (now + self.timeout_ns, self.seq, fq, group))
            self.live += 1

    def answered(self) -> None:
        """A group with an entry here was answered (its entry goes lazily)."""
        self.live -= 1
        heap = self.heap
        if len(heap) > 2 * self.live + 64:
            self.heap = [e for e in heap if e[3].state == PENDING]
            heapq.heapify(self.heap)

    def next_deadline(self) -> int | None:
        heap = self.heap
        while heap and heap[0][3].state != PENDING:
            heapq.heappop(heap)  # answered meanwhile: nothing is due for it
        return heap[0][0] if heap else None

    def expire(self, now: int) -> int:
        """Answer INVALID every group whose answer is overdue; how many were."""
        n = 0
        while self.heap and self.heap[0][0] <= now:  # (answers may rebuild the heap)
            _due, _key, fq, group = heapq.heappop(self.heap)
            if group.state == PENDING and fq.groups.get(group.cookie) is group:
                fq.auto_response([group], "response_timeout", now)
                fq.counters["response_timeouts"] += 1
                n += 1
        return n


class FaultQueue(IommufdObject):
    __slots__ = (
        "counters",
        "deadlines",
        "delivered",
        "groups",
        "hot",
        "iopf",
        "max_pending",
        "next_cookie",
        "sink",
        "throttled_total",
        "throttled_unreported",
    )
    kind: ClassVar[str] = "fault"

    def __init__(self, obj_id: int, ctx: ContextBase, iopf: IopfQueue) -> None:
        super().__init__(obj_id, ctx)
        self.iopf = iopf
        self.deadlines: ResponseDeadlines = ctx.services.deadlines
        self.counters: Counter[str] = ctx.counters
        self.hot = ctx.hot
        self.sink: EventSink = ctx.sink
        self.max_pending = ctx.limits.max_pending
        self.groups: dict[int, IopfGroup] = {}  # the kernel's ``response`` xarray
        self.next_cookie = 1
        self.throttled_unreported = 0  # carried by the next FaultDelivered as ``throttled``
        self.throttled_total = 0
        self.delivered = 0

    def describe(self) -> dict[str, object]:
        row = super().describe()
        row.update(
            pending=len(self.groups),
            next_cookie=self.next_cookie,
            delivered=self.delivered,
            throttled=self.throttled_total,
        )
        return row

    # ------------------------------------------------------------------ delivery
    def iopf_handler(self, group: IopfGroup, now: int) -> int | None:
        """``iommufd_fault_iopf_handler``: queue the group and tell the client, or
        return the code the fault path must answer with at once."""
        counters = self.counters
        dev = group.dev
        last = group.faults[-1]
        # Cookies are uint32 and never reused: a queue that handed out 2^32 - 1 of them
        # cannot deliver any more (the client allocates a new one); its groups are refused.
        if self.next_cookie > UINT32_MAX:
            counters["auto_responses"] += 1
            counters["cookies_exhausted"] += 1
            return RESP_INVALID
        # Bounded memory: a full fault queue answers SUCCESS at once (the device retries).
        if len(self.groups) >= self.max_pending:
            counters["throttled"] += 1
            self.throttled_unreported += 1
            self.throttled_total += 1
            if self.sink.trace_enabled:
                self.sink.trace(
                    "throttle",
                    rid=dev.name,
                    pasid=fault_pasid(last[0], last[1]),
                    grpid=last[2],
                    fault_id=self.id,
                    t_ns=now,
                )
            return RESP_SUCCESS
        cookie = self.next_cookie
        self.next_cookie = cookie + 1
        group.cookie = cookie
        self.groups[cookie] = group
        attach = group.attach
        attach.groups[cookie] = group
        attach.domain.pending += 1  # seed 004 step 6: the per-domain count
        self.deadlines.push(self, group, now)
        self.delivered += 1
        self.hot["delivered"] += 1
        binding = dev.binding
        dev_id = binding.id if binding is not None else 0
        faults = group.faults
        if len(faults) == 1:  # the common group of one request: no comprehension frame
            records = [
                {
                    "flags": last[0],
                    "dev_id": dev_id,
                    "pasid": last[1],
                    "grpid": last[2],
                    "perm": last[3],
                    "addr": last[4],
                    "length": 0,
                }
            ]
        else:
            records = [
                {
                    "flags": f[0],
                    "dev_id": dev_id,
                    "pasid": f[1],
                    "grpid": f[2],
                    "perm": f[3],
                    "addr": f[4],
                    "length": 0,
                }
                for f in faults
            ]
        throttled = self.throttled_unreported
        self.throttled_unreported = 0
        self.sink.events.append(FaultDelivered(self.ctx, self.id, cookie, records, throttled))
        if self.sink.trace_enabled:
            self.sink.trace(
                "fault",
                rid=dev.name,
                dev_id=dev_id,
                pasid=fault_pasid(last[0], last[1]),
                grpid=last[2],
                addr=group.faults[0][4],
                perm=last[3],
                fault_id=self.id,
                cookie=cookie,
                records=len(group.faults),
                t_ns=now,
            )
        return None

    # ------------------------------------------------------------------ answers
    def _take(self, group: IopfGroup) -> None:
        """Ownership leaves the queue (and its handle and domain) before the answer."""
        del self.groups[group.cookie]
        if self.deadlines.timeout_ns > 0:
            self.deadlines.answered()
        attach = group.attach
        attach.groups.pop(group.cookie, None)
        attach.domain.pending -= 1

    def respond(self, cookie: int, code: int, now: int) -> bool:
        """The client's answer to one cookie; False if it is not pending here."""
        group = self.groups.get(cookie)  # seed 004 step 8: O(1), never a search
        if group is None:
            return False
        self._take(group)
        self.iopf.group_response(group, code)
        self.hot["responses"] += 1
        if self.sink.trace_enabled:
            last = group.faults[-1]
            self.sink.trace(
                "response",
                rid=group.dev.name,
                pasid=fault_pasid(last[0], last[1]),
                grpid=last[2],
                fault_id=self.id,
                cookie=cookie,
                code=code,
                t_ns=now,
            )
        return True

    def auto_response(self, groups: Sequence[IopfGroup], reason: str, now: int) -> int:
        """INVALID for ``groups`` on the daemon's behalf (``iommufd_auto_response_faults``)."""
        for group in list(groups):
            self._take(group)
            self.iopf.group_response(group, RESP_INVALID)
            self.counters["auto_responses"] += 1
            if self.sink.trace_enabled:
                last = group.faults[-1]
                self.sink.trace(
                    "auto_response",
                    rid=group.dev.name,
                    pasid=fault_pasid(last[0], last[1]),
                    grpid=last[2],
                    fault_id=self.id,
                    cookie=group.cookie,
                    code=RESP_INVALID,
                    reason=reason,
                    t_ns=now,
                )
        return len(groups)


def auto_response_faults(attach: AttachHandle, reason: str, now: int) -> int:
    """``iommufd_auto_response_faults(hwpt, handle)`` with the attachment's *own* HWPT,
    never the new one of a replace (the 6.15-6.18 bug, kernel-iopf.md 7.5): INVALID for
    every pending group of that handle, on its fault queue."""
    fq = attach.fault
    if fq is None or not attach.groups:
        return 0
    return fq.auto_response(list(attach.groups.values()), reason, now)


def _destroy(ctx: ContextBase, obj: IommufdObject, now: int) -> None:
    """``iommufd_fault_destroy``: every group still held is answered INVALID (only
    reachable at teardown: a queue a HWPT references is ``EBUSY``)."""
    assert isinstance(obj, FaultQueue)
    if obj.groups:
        with ctx.iommu.response_batch():
            obj.auto_response(list(obj.groups.values()), "fault_destroy", now)


register_object_ops(FaultQueue, ObjectOps(destroy=_destroy, teardown_rank=lambda o: 3))


@trait
class FaultOps(ContextBase):
    """The context's fault queue operations."""

    def fault_alloc(self) -> int:
        """``IOMMU_FAULT_QUEUE_ALLOC``."""
        obj_id = self.new_id()
        self.insert(FaultQueue(obj_id, self, self.iommu.iopf))
        return obj_id

    def page_response(self, fault_id: int, responses: Sequence[tuple[int, int]], now: int) -> int:
        """The fault fd's ``write()`` (``iommufd_fault_fops_write``): entries in order,
        stopping at the first whose code is not SUCCESS/INVALID or whose cookie is not
        pending here; what came before it stays applied. Returns how many were applied;
        ``EINVAL`` when the very first entry is bad."""
        fq = self.lookup(fault_id)
        if not isinstance(fq, FaultQueue):
            raise CoreError(ENOENT, f"no fault queue {fault_id!r}")
        done = 0
        error = ""
        with self.iommu.response_batch():
            for cookie, code in responses:
                if code != 0 and code != 1:
                    error = f"entry {done}: code {code!r} is neither SUCCESS (0) nor INVALID (1)"
                    break
                if not fq.respond(cookie, code, now):
                    error = (
                        f"entry {done}: cookie {cookie!r} is not pending in fault queue {fault_id}"
                    )
                    break
                done += 1
        if error:
            self.counters["bad_responses"] += 1
            if done == 0:
                raise CoreError(EINVAL, error)
        return done


__all__ = ["FaultOps", "FaultQueue", "auto_response_faults"]
