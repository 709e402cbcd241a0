"""The fault path (``drivers/iommu/io-pgfault.c`` + iommufd's handler), after seed 004.

``report_device_fault`` reads top to bottom as ``iommu_report_device_fault`` and Jason
Gunthorpe's eight steps:

- ``find_fault_handler`` first, for every request, last or not: the attachment of
  (device, PASID) by one dict read, no lock (seed 003). No fault-capable attachment:
  ``iopf_error_response`` answers INVALID at once and nothing is set aside
  (PROTOCOL.md v2 item 4);
1. one allocation per request: the fault record tuple (the group is the only other);
2. the device's fault state is the ``DeviceInfo`` the PRQ thread found by dict lookup
   (seed 000), with no lock and no search;
3. nothing here takes a lock that detach or unbind could hold (seed 003): the core is
   single-threaded and sans-IO, so every lookup is a plain dict read;
4. a request without LAST_PAGE is set aside on the device's partial list and we return;
5. the last request assembles the group: the partials of the same group index *and
   PASID* in arrival order, the last one last (the kernel compares the index alone);
6. the group is counted pending on its domain;
7. the *group* is queued whole on the HWPT's fault queue under a fresh cookie;
8. the answer finds the group by (fault queue, cookie), never by a list search.

Why detach is safe without a lock: detach first removes the (device, PASID) entry
from ``DeviceInfo.attachments`` (so the lookup can no longer find it), then clears the
PASID entry, invalidates, drains the PRQ (every request already posted is taken off
and runs through the lookup, finding no attachment, hence answered INVALID), then
auto-responds the groups queued before, and only then drops the HWPT reference. A
group is owned by exactly one place at a time (``IopfGroup.state``): a fault queue's
``groups`` dict while pending, nobody once answered; every answer goes through
``_complete`` which flips the state, so a second answer is impossible by construction
(the ownership the kernel gets from ``iopf_group_take_ownership``, proposed after 6.18).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hwmodel import RESP_INVALID, RESP_SUCCESS
from hwmodel.descriptors import encode_page_group_response
from iopfd.core.events import FaultDelivered
from iopfd.core.intel.dmar import qi_submit_responses
from iopfd.core.objects import UINT32_MAX

if TYPE_CHECKING:
    from hwmodel import IommuUnit
    from iopfd.core.core import Core
    from iopfd.core.device import Attachment
    from iopfd.core.intel.iommu import DeviceInfo

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


class IopfGroup:
    """A completed page-request group (``struct iopf_group``)."""

    __slots__ = ("attach", "cookie", "dev", "faults", "state", "t_ns")

    def __init__(self, dev: DeviceInfo, faults: list[Fault], attach: Attachment,
                 cookie: int, t_ns: int) -> None:
        self.dev = dev
        self.faults = faults      # arrival order; the LAST_PAGE one last
        self.attach = attach
        self.cookie = cookie
        self.t_ns = t_ns
        self.state = PENDING

    @property
    def last(self) -> Fault:
        return self.faults[-1]


def page_response(  # noqa: PLR0917 - the descriptor's fields, on the hot path
    core: Core, unit: IommuUnit, sid: int, pasid_present: bool, pasid: int, prgi: int,
    code: int,
) -> None:
    """``intel_iommu_page_response``: a page group response for the unit's IQ, with the
    RID, PASID (PP as the request had it) and PRGI of the group's last request.

    Responses are queued per unit and go out in ``qi_batch``-sized submissions when the
    operation that produced them ends (``flush_responses``): the IQ keeps them in order,
    and one wait descriptor covers a batch instead of one per response.
    """
    image = encode_page_group_response(sid, pasid_present, pasid, code, prgi, True)
    out = core.responses_out.get(unit.name)
    if out is None:
        core.responses_out[unit.name] = (unit, [image])
    else:
        out[1].append(image)


def flush_responses(core: Core) -> None:
    """Submit every queued page group response (see ``page_response``)."""
    if not core.responses_out:
        return
    batches = list(core.responses_out.values())
    core.responses_out.clear()
    for unit, descs in batches:
        qi_submit_responses(unit, descs, core.counters)


def _no_handler(core: Core, dev: DeviceInfo, flags: int, pasid: int, grpid: int,  # noqa: PLR0917
                now: int) -> None:
    """``err_bad_iopf``: no fault-capable attachment for this request's (device, PASID):
    ``iopf_error_response`` answers INVALID now, last request or not (the function
    then sees extra responses for the PRG index, PCIe's unexpected-PRGI case). It
    counts as a group of one request, answered by the daemon."""
    page_response(core, dev.unit, dev.sid, bool(flags & PASID_VALID), pasid, grpid,
                  RESP_INVALID)
    counters = core.counters
    counters["groups"] += 1
    counters["auto_responses"] += 1
    counters["no_handler_responses"] += 1
    if not flags & LAST_PAGE:
        counters["no_handler_partial_responses"] += 1
    if core.trace_enabled:
        core.trace("auto_response", rid=dev.name, pasid=_pasid(flags, pasid), grpid=grpid,
                   code=RESP_INVALID, reason="no_handler", last=bool(flags & LAST_PAGE),
                   t_ns=now)


def _take_partials(core: Core, dev: DeviceInfo, grpid: int, flags: int,
                   pasid: int) -> list[Fault] | None:
    """Step 5: the set-aside requests of this group: same index *and* same PASID, in
    arrival order. The kernel matches the index alone; a request of another PASID
    under the same index is left over from an earlier group (a function has one group
    per index outstanding) and is freed here, never delivered in this group."""
    partial = dev.partials.pop(grpid, None)
    if partial is None:
        return None
    dev.n_partials -= len(partial)
    key = flags & PASID_VALID
    same = [f for f in partial if f[1] == pasid and f[0] & PASID_VALID == key]
    stale = len(partial) - len(same)
    if stale:
        core.counters["partials_discarded"] += stale
    return same or None


def report_device_fault(core: Core, dev: DeviceInfo, fault: Fault, now: int) -> None:
    """``iommu_report_device_fault``: one request from the PRQ thread."""
    # Steps 1-3: ``fault`` is the one allocation; ``dev`` came from a dict lookup.
    flags, pasid, grpid = fault[0], fault[1], fault[2]

    # ``find_fault_handler``, for every request (last or not): the attachment of
    # (device, PASID) by one dict read, no lock (seed 003), and its fault queue.
    attach = dev.attachments.get(pasid if flags & PASID_VALID else None)
    fq = attach.fault if attach is not None else None
    if attach is None or fq is None:
        _no_handler(core, dev, flags, pasid, grpid, now)
        if flags & LAST_PAGE:
            # The group's set-aside requests were answered with it; the kernel leaves
            # them for the next group with this index, iopfd frees them.
            discard_group_partials(core, dev, grpid)
        return

    # Step 4: not the last request of its group: set it aside and return.
    if not flags & LAST_PAGE:
        if dev.n_partials >= core.limits.max_partials_per_device:
            core.counters["partials_dropped"] += 1
            return
        partial = dev.partials.get(grpid)
        if partial is None:
            dev.partials[grpid] = [fault]
        else:
            partial.append(fault)
        dev.n_partials += 1
        return

    # Step 5: the last request completes the group, partials in arrival order.
    faults = _take_partials(core, dev, grpid, flags, pasid) if dev.n_partials else None
    if faults is None:
        faults = [fault]
    else:
        faults.append(fault)
    core.counters["groups"] += 1

    # Cookies are uint32 and never reused: a queue that handed out 2^32 - 1 of them
    # cannot deliver any more (the client allocates a new one); its groups are refused.
    if fq.next_cookie > UINT32_MAX:
        page_response(core, dev.unit, dev.sid, bool(flags & PASID_VALID), pasid, grpid,
                      RESP_INVALID)
        core.counters["auto_responses"] += 1
        core.counters["cookies_exhausted"] += 1
        return

    # Bounded memory: a full fault queue answers SUCCESS at once (the device retries).
    if len(fq.groups) >= core.limits.max_pending:
        page_response(core, dev.unit, dev.sid, bool(flags & PASID_VALID), pasid, grpid,
                      RESP_SUCCESS)
        core.counters["throttled"] += 1
        fq.throttled_unreported += 1
        fq.throttled_total += 1
        if core.trace_enabled:
            core.trace("throttle", rid=dev.name, pasid=_pasid(flags, pasid), grpid=grpid,
                       fault_id=fq.id, t_ns=now)
        return

    # Steps 6-7: counted pending on its domain, queued whole under a cookie that was
    # never used before.
    cookie = fq.take_cookie()
    group = IopfGroup(dev, faults, attach, cookie, now)
    fq.groups[cookie] = group
    attach.groups[cookie] = group
    attach.domain.pending += 1
    fq.delivered += 1
    core.counters["delivered"] += 1
    dev_id = dev.dev_id
    records = [
        {"flags": f[0], "dev_id": dev_id, "pasid": f[1], "grpid": f[2], "perm": f[3],
         "addr": f[4], "length": 0}
        for f in faults
    ]
    throttled = fq.throttled_unreported
    fq.throttled_unreported = 0
    core.events.append(FaultDelivered(fq.ctx, fq.id, cookie, records, throttled))
    if core.trace_enabled:
        core.trace("fault", rid=dev.name, dev_id=dev_id, pasid=_pasid(flags, pasid),
                   grpid=grpid, addr=faults[0][4], perm=fault[3], fault_id=fq.id,
                   cookie=cookie, records=len(faults), t_ns=now)


def _pasid(flags: int, pasid: int) -> int | None:
    return pasid if flags & PASID_VALID else None


def _complete(core: Core, group: IopfGroup, code: int) -> None:
    """Answer ``group`` and release it: the single place a queued group is answered."""
    if group.state != PENDING:  # unreachable by construction; counted, never answered twice
        core.counters["double_answers_prevented"] += 1
        return
    group.state = ANSWERED
    attach = group.attach
    attach.groups.pop(group.cookie, None)
    attach.domain.pending -= 1
    flags, pasid, grpid = group.faults[-1][0], group.faults[-1][1], group.faults[-1][2]
    dev = group.dev
    page_response(core, dev.unit, dev.sid, bool(flags & PASID_VALID), pasid, grpid, code)


def respond(core: Core, fault_id: int, group: IopfGroup, code: int, now: int) -> None:
    """The client's answer; the caller already popped ``group`` from its fault queue
    and calls ``flush_responses`` once its whole batch of answers is done."""
    _complete(core, group, code)
    core.counters["responses"] += 1
    if core.trace_enabled:
        f = group.faults[-1]
        core.trace("response", rid=group.dev.name, pasid=_pasid(f[0], f[1]), grpid=f[2],
                   fault_id=fault_id, cookie=group.cookie, code=code, t_ns=now)


def auto_respond_attachment(core: Core, attach: Attachment, reason: str, now: int) -> int:
    """INVALID for every pending group of one attachment (``iommufd_auto_response_faults``
    with the attachment's own HWPT, never the new one of a replace: kernel-iopf.md 7.5)."""
    fq = attach.fault
    if fq is None or not attach.groups:
        return 0
    groups = list(attach.groups.values())
    for group in groups:
        del fq.groups[group.cookie]  # ownership leaves the fault queue first
        _complete(core, group, RESP_INVALID)
        core.counters["auto_responses"] += 1
        if core.trace_enabled:
            f = group.faults[-1]
            core.trace("auto_response", rid=group.dev.name, pasid=_pasid(f[0], f[1]),
                       grpid=f[2], fault_id=fq.id, cookie=group.cookie, code=RESP_INVALID,
                       reason=reason, t_ns=now)
    flush_responses(core)
    return len(groups)


def discard_group_partials(core: Core, dev: DeviceInfo, grpid: int) -> int:
    """Free the set-aside requests of one group (its last request was answered)."""
    faults = dev.partials.pop(grpid, None)
    if not faults:
        return 0
    dev.n_partials -= len(faults)
    core.counters["partials_discarded"] += len(faults)
    return len(faults)


def discard_partials(core: Core, dev: DeviceInfo, pasid: int | None = None,
                     *, all_pasids: bool = False) -> int:
    """Free set-aside requests of ``dev`` (of one PASID, or all of them)."""
    if not dev.n_partials:
        return 0
    dropped = 0
    if all_pasids:
        dropped = dev.n_partials
        dev.partials.clear()
    else:
        for grpid in list(dev.partials):
            keep = [f for f in dev.partials[grpid] if _pasid(f[0], f[1]) != pasid]
            dropped += len(dev.partials[grpid]) - len(keep)
            if keep:
                dev.partials[grpid] = keep
            else:
                del dev.partials[grpid]
    dev.n_partials -= dropped
    core.counters["partials_discarded"] += dropped
    return dropped


__all__ = [
    "LAST_PAGE",
    "NEEDS_PASID",
    "PASID_VALID",
    "Fault",
    "IopfGroup",
    "auto_respond_attachment",
    "discard_group_partials",
    "discard_partials",
    "page_response",
    "report_device_fault",
    "respond",
]
