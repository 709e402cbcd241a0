"""The invalidation queue client (``drivers/iommu/intel/dmar.c``: ``qi_submit_sync``).

Every submission ends with an invalidation wait descriptor (SW=1; PD=1 for a drain)
and is complete when ``submit`` returns: the hardware model executes in order. A
cache-tag flush is one submission per unit (``qi_submit_flush``); page group
responses go in chunks of ``QI_MAX_BATCHED_DESC_COUNT``, each closed by a wait.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hwmodel import InvalidDescriptorError, InvWaitDescriptor, PageGroupResponseDescriptor
from hwmodel.descriptors import InvDescriptor, encode_page_group_response

if TYPE_CHECKING:
    from hwmodel import IommuUnit

QI_MAX_BATCHED_DESC_COUNT = 16
#: Descriptor types that invalidate nothing: waits and page group responses.
_NOT_INVALIDATIONS = frozenset({InvWaitDescriptor.TYPE, PageGroupResponseDescriptor.TYPE})
QI_DONE = 1
QI_STATUS_ADDR = 0x1000  # the driver's status word; the model writes STATUS DATA there

WAIT_SYNC = InvWaitDescriptor(sw=True, status_data=QI_DONE, status_addr=QI_STATUS_ADDR)
WAIT_DRAIN = InvWaitDescriptor(sw=True, status_data=QI_DONE, status_addr=QI_STATUS_ADDR, pd=True)
WAIT_FENCE = InvWaitDescriptor(sw=False, status_data=QI_DONE, fn=True)


def qi_submit_sync(
    unit: IommuUnit, descs: Sequence[InvDescriptor], counters: Counter[str], *, drain: bool = False
) -> None:
    """Submit ``descs`` plus one wait (PD=1 with ``drain``) and return when done.

    An invalid descriptor (IQE) is handled as ``qi_check_fault`` does: the hardware
    model turns it into a no-op wait and goes on with the rest, the error is counted
    (``iq_errors``) and the unit is never left halted.
    """
    batch = [*descs, WAIT_DRAIN if drain else WAIT_SYNC]
    for d in batch:
        counters["iq_descriptors_" + d.NAME] += 1
        if d.TYPE not in _NOT_INVALIDATIONS:
            counters["invalidations"] += 1
    try:
        unit.iq.submit(batch)
    except InvalidDescriptorError:
        _recover_iqe(unit, counters)


def _recover_iqe(unit: IommuUnit, counters: Counter[str]) -> None:
    """``qi_check_fault`` on IQE: count it; the bad descriptor becomes a no-op wait and
    the queue goes on, until nothing bad is left."""
    counters["iq_errors"] += 1
    while unit.iq.iqe:
        try:
            unit.iq.clear_iqe(resume=True)
        except InvalidDescriptorError:
            counters["iq_errors"] += 1


def qi_submit_flush(unit: IommuUnit, descs: Sequence[InvDescriptor], counters: Counter[str]) -> int:
    """A cache-tag flush for one unit: one submission closed by one wait (seed 002:
    the invalidations, then a wait). It is split only where the queue could not hold
    it, ``count + 2`` slots per submission as ``qi_submit_sync`` requires (the kernel
    also cuts at ``QI_MAX_BATCHED_DESC_COUNT``, the size of its fixed ``qi_batch``
    array, which costs a wait per 16 descriptors; iopfd keeps to the minimum).
    Returns the number of submissions (= waits)."""
    room = max(1, unit.iq.entries - 2)
    n = 0
    for i in range(0, len(descs), room):
        qi_submit_sync(unit, descs[i : i + room], counters)
        n += 1
    return n


_WAIT_SYNC_IMAGE = WAIT_SYNC.encode()


def qi_submit_responses(
    unit: IommuUnit, images: Sequence[bytes], counters: Counter[str], hot: dict[str, int]
) -> int:
    """Page group responses already encoded (``encode_page_group_response``), in
    ``qi_batch`` chunks each closed by a wait, as ``qi_submit_batched`` would send
    them; no descriptor objects on the answer path. Returns the submissions made.
    The descriptors are counted in ``hot`` (the per-fault counts, ``Core.counters``)."""
    n = 0
    for i in range(0, len(images), QI_MAX_BATCHED_DESC_COUNT):
        chunk = [*images[i : i + QI_MAX_BATCHED_DESC_COUNT], _WAIT_SYNC_IMAGE]
        hot["iq_descriptors_page_group_response"] += len(chunk) - 1
        hot["iq_descriptors_wait"] += 1
        try:
            unit.iq.submit_images(chunk)
        except InvalidDescriptorError:
            _recover_iqe(unit, counters)
        n += 1
    return n


class ResponseBatch:
    """Page group responses (``intel_iommu_page_response``), one place to send them.

    Outside a batch a response is submitted at once, closed by its wait, as the kernel
    does. Inside one (``with batch:``, reentrant) responses are queued per unit and go
    out when the outermost batch ends, in ``qi_batch`` chunks each closed by one wait:
    the IQ keeps them in order, and a burst (a PRQ pass, a client's write of many
    answers, a detach answering its groups) costs a wait per 16 instead of one each.
    The batch is sent even when the operation inside raised: an answer given is sent.
    """

    __slots__ = ("counters", "depth", "hot", "out")

    def __init__(self, counters: Counter[str], hot: dict[str, int]) -> None:
        self.counters = counters
        self.hot = hot
        self.depth = 0
        self.out: dict[str, tuple[IommuUnit, list[bytes]]] = {}

    def __enter__(self) -> None:
        self.depth += 1

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if not self.depth and self.out:
            self.flush()

    def add(  # noqa: PLR0917 - the descriptor's fields, on the hot path
        self,
        unit: IommuUnit,
        sid: int,
        pasid_valid: bool,
        pasid: int,
        prgi: int,
        code: int,
        last: bool = True,
    ) -> None:
        image = encode_page_group_response(sid, pasid_valid, pasid, code, prgi, last)
        if not self.depth:
            qi_submit_responses(unit, (image,), self.counters, self.hot)
            return
        out = self.out.get(unit.name)
        if out is None:
            self.out[unit.name] = (unit, [image])
        else:
            out[1].append(image)

    def flush(self) -> None:
        out = self.out
        if len(out) == 1:  # the common case: one unit's answers
            ((unit, images),) = out.values()
            out.clear()
            qi_submit_responses(unit, images, self.counters, self.hot)
            return
        batches = list(out.values())
        out.clear()
        for unit, images in batches:
            qi_submit_responses(unit, images, self.counters, self.hot)
