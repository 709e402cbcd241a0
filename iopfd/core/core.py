"""The core: the kernel's side of iopfd, driven by the daemon (docs/architecture.md).

``Core`` wires the layers together, as boot does: the Intel driver over the machine's
units, the io-pgfault queue between them, the IOMMU core's devices, the emulation's
admin controls, and the contexts (one per client). It keeps no behaviour of its own
beyond the interrupt path: ``service(now)`` advances the machine and runs the PRQ
thread of every unit whose page-request event fired, until nothing more is due at
``now``; and the admin views (``devices``, ``topology``, ``objects``, ``pending``,
``status``) read the layers' state.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Generator

from hwmodel import Machine
from hwmodel.counting import HotCounts
from iopfd.core.budgets import Budgets
from iopfd.core.context import Context
from iopfd.core.device import DmaTag, attached_row
from iopfd.core.emulation import Emulation
from iopfd.core.errors import CoreLimits
from iopfd.core.eventq import FaultQueue, ResponseDeadlines
from iopfd.core.events import CoreEvent, DmaDone, EventSink
from iopfd.core.intel.iommu import FlushStats, IntelIommu, UnitState
from iopfd.core.io_pgfault import PASID_VALID, IopfQueue
from iopfd.core.iommu import Device, IommuCore
from iopfd.core.main import CoreServices, IdAllocator
from iopfd.core.profile import DEFAULT_KERNEL, KernelProfile, kernel_profile

#: Counters every ``status`` shows, even at zero (docs/protocol.md, *Admin*).
STATUS_COUNTERS = (
    "page_requests",
    "groups",
    "delivered",
    "responses",
    "auto_responses",
    "throttled",
    "response_timeouts",
    "prq_overflows",
    "invalidations",
    "bad_requests",
    "hw_auto_responses",
    "partials_discarded",
    "stop_markers",
    "drains",
    "dma_started",
    "dma_completed",
    "no_handler_responses",
    "unexpected_prgi",
    "resets",
    "unplugs",
    "forced_unplugs",
)
#: What the core counts on every fault: in a plain dict (``hwmodel.counting``).
CORE_HOT_COUNTERS = dict.fromkeys(
    (
        "page_requests",
        "groups",
        "delivered",
        "responses",
        "iq_descriptors_page_group_response",
        "iq_descriptors_wait",
        "dma_started",
        "dma_completed",
        "ioas_maps",
    ),
    0,
)
#: ``service`` stops after this many PRQ passes at one ``now`` (a guard, never reached
#: in practice: the device's retries come after a back-off, so time must move on).
MAX_SERVICE_ROUNDS = 1024


class Core:
    """The kernel: intel driver, io-pgfault and iommufd, over a ``hwmodel.Machine``."""

    def __init__(
        self,
        machine: Machine,
        limits: CoreLimits | None = None,
        profile: KernelProfile | None = None,
    ) -> None:
        self.machine = machine
        self.limits = limits if limits is not None else CoreLimits()
        self.profile = profile if profile is not None else kernel_profile(DEFAULT_KERNEL)
        # Every layer counts into one Counter; what a fault counts goes to a plain dict
        # folded into it on read (``hwmodel.counting``): see ``counters``.
        self._counts = HotCounts(CORE_HOT_COUNTERS)
        counters = self._counts.cold
        hot = self._hot = self._counts.hot
        self.sink = EventSink()
        self.iopf = IopfQueue(counters, self.limits, self.sink, hot)
        self.driver = IntelIommu(machine, self.profile, self.iopf, counters, self.sink, hot=hot)
        self.iopf.driver = self.driver
        self.iommu = IommuCore(self.driver, self.iopf, counters)
        self.emulation = Emulation(self.iommu, self.driver, machine, counters, self.sink)
        self.budgets = Budgets(self.limits)
        self.deadlines = ResponseDeadlines(self.limits.response_timeout_ns)
        self.services = CoreServices(
            self.iommu,
            machine,
            IdAllocator(),
            self.limits,
            self.profile,
            counters,
            hot,
            self.sink,
            self.budgets,
            self.deadlines,
        )
        self.contexts: dict[int, Context] = {}
        self._next_ctx = 1
        devices = self.iommu.devices
        for name, fn in machine.functions.items():
            devices[name] = Device(fn, self.driver.device_info(fn))
        # PFs first: a VF's PRI is its PF's, enabled before it (profile 6.18).
        for dev in sorted(devices.values(), key=lambda d: d.is_vf):
            if not dev.removed:
                self.driver.probe_device(dev)

    # ------------------------------------------------------------------ layers' state
    @property
    def counters(self) -> Counter[str]:
        """What every layer of the core counted (the per-fault counts folded in)."""
        return self._counts.folded()

    @property
    def devices(self) -> dict[str, Device]:
        return self.iommu.devices

    @property
    def units(self) -> dict[str, UnitState]:
        return self.driver.units

    @property
    def last_flush(self) -> FlushStats:
        """What the last ``ioas_unmap``/``hwpt_invalidate`` issued."""
        return self.driver.last_flush

    @property
    def trace_enabled(self) -> bool:
        return self.sink.trace_enabled

    @trace_enabled.setter
    def trace_enabled(self, value: bool) -> None:
        self.sink.trace_enabled = value

    # ------------------------------------------------------------------ contexts
    def open_context(self, label: str, uid: int | None = None) -> Context:
        """A new client context; what it holds is charged to ``uid`` (the peer's
        ``SO_PEERCRED`` uid; ``None``: one shared account, for tests and benches)."""
        ctx = Context(self.services, self._next_ctx, label, uid)
        self._next_ctx += 1
        self.contexts[ctx.id] = ctx
        return ctx

    def close_context(self, ctx: Context, now: int) -> None:
        """Release everything ``ctx`` owns; its pending groups are answered INVALID."""
        if ctx.closed:
            return
        with self.driver.response_batch():
            ctx.teardown(now)
        self._closed(ctx)

    def shutdown(self, now: int) -> int:
        """The daemon exits: what the hardware has posted is delivered, then every
        group still pending in any context is answered INVALID (``shutdown``) and the
        contexts go, without the per-attachment detach, drain and flush of a close.
        The emulated machine goes with the process, so those would protect no one,
        while a context with 65,533 PASID attachments would take seconds of them; this
        costs what is pending and the contexts' objects. Objects and mapped pages leave
        the budgets; domain IDs stay charged (the units go with the process). Returns
        the groups answered."""
        self.service(now)
        answered = 0
        with self.driver.response_batch():
            for ctx in list(self.contexts.values()):
                for obj in list(ctx.objects.values()):
                    if isinstance(obj, FaultQueue) and obj.groups:
                        answered += obj.auto_response(list(obj.groups.values()), "shutdown", now)
                    ctx.account.release_object()
                ctx.uncharge_pages(ctx.mapped_pages)
                ctx.closed = True
                self._closed(ctx)
        return answered

    def close_context_steps(self, ctx: Context, now: int) -> Generator[None, None, None]:
        """``close_context`` in bounded steps (``Context.teardown_steps``), each in its
        own response batch; the daemon serves others between them. A generator closed
        early leaves the rest to ``close_context``, which finishes it."""
        if ctx.closed:
            return
        yield from ctx.teardown_steps(now, self.driver.response_batch)
        self._closed(ctx)

    def _closed(self, ctx: Context) -> None:
        if self.contexts.pop(ctx.id, None) is not None:
            self.budgets.close(ctx.account)

    # ------------------------------------------------------------------ service
    def service(self, now: int) -> None:
        """The interrupt path: deliver posted page requests, run due retries, run the
        PRQ thread of every unit whose event fired, until quiet at ``now``; complete
        removals that are due; report finished transfers."""
        machine = self.machine
        driver = self.driver
        for _ in range(MAX_SERVICE_ROUNDS):
            machine.advance(now)
            fired = machine.take_interrupts()
            if not fired:
                break
            driver.service(now, fired)
        else:
            self.counters["service_round_limit"] += 1
        if self.emulation.removals:
            self.emulation.service(now)
        deadlines = self.deadlines
        if deadlines.heap and deadlines.heap[0][0] <= now:
            with driver.response_batch():
                deadlines.expire(now)
        completed = machine.take_completed()
        if completed:
            self._hot["dma_completed"] += len(completed)
            emit = self.sink.events.append
            for t in completed:
                tag = t.tag
                if isinstance(tag, DmaTag) and not tag.ctx.closed:
                    status = t.status
                    emit(
                        DmaDone(
                            tag.ctx,
                            tag.tag,
                            status._value_ if status is not None else "failure",
                            t.faults,
                            t.bytes,
                        )
                    )

    def next_deadline(self) -> int | None:
        """The earliest time ``service`` has work: a retry, an unplug's grace, an
        overdue answer."""
        due = [
            d
            for d in (
                self.machine.next_deadline(),
                self.emulation.next_deadline(),
                self.deadlines.next_deadline(),
            )
            if d is not None
        ]
        return min(due) if due else None

    def take_events(self) -> list[CoreEvent]:
        return self.sink.take()

    # ------------------------------------------------------------------ admin views
    def device_list(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for index, dev in enumerate(self.devices.values()):
            fn = dev.fn
            pri = fn.pri
            rows.append(
                {
                    "rid": dev.name,
                    # /dev/vfio/devices/vfioN: the function's place in the topology, stable
                    # for the daemon's life (docs/uapi.md).
                    "vfio": index,
                    "iommu": dev.info.unit.name,
                    "pri": bool(fn.spec.pri),
                    "ats": bool(fn.spec.ats),
                    "pasid_bits": fn.spec.pasid_bits,
                    "pf": str(fn.pf.rid) if fn.pf is not None else None,
                    "state": dev.state,
                    "removing": dev.removing,
                    "ats_enabled": bool(fn.ats_enabled),
                    "pri_enabled": bool(pri.enabled) and dev.info.pri_enabled,
                    "pri_status": {
                        "response_failure": bool(pri.response_failure),
                        "unexpected_prgi": bool(pri.unexpected_prgi),
                        "stopped": bool(pri.stopped),
                    },
                }
            )
        return rows

    def _fault_queues(self) -> list[FaultQueue]:
        return [
            o
            for ctx in self.contexts.values()
            for o in ctx.objects.values()
            if isinstance(o, FaultQueue)
        ]

    def pending_count(self) -> int:
        return sum(len(fq.groups) for fq in self._fault_queues())

    def status_counters(self) -> dict[str, int]:
        out = dict.fromkeys(STATUS_COUNTERS, 0)
        out.update(self.counters)
        # Counts that are never per-fault: read without folding (hwmodel.counting).
        out["hw_auto_responses"] = sum(
            u.unit.cold_counters["hw_auto_responses"] for u in self.units.values()
        )
        out["unexpected_prgi"] = sum(
            f.cold_counters["unexpected_prgi"] for f in self.machine.functions.values()
        )
        out["pending"] = self.pending_count()
        out.update(self.budgets.counters())
        return out

    def topology(self) -> dict[str, object]:
        iommus = []
        for us in self.units.values():
            unit = us.unit
            iommus.append(
                {
                    "name": unit.name,
                    "segment": unit.spec.segment,
                    "prq_entries": unit.prq.entries,
                    "prq_used": unit.prq.used,
                    "prs": unit.read_prs(),
                    "nest": unit.spec.nest,
                    "pasid_bits": unit.spec.pasid_bits,
                    "dids_in_use": us.dids_in_use(),
                    "devices": [d.name for d in self.devices.values() if d.info.ustate is us],
                }
            )
        devices = []
        for row, dev in zip(self.device_list(), self.devices.values(), strict=True):
            row = dict(row)
            row["owner"] = dev.binding.ctx.label if dev.binding is not None else None
            row["dev_id"] = dev.dev_id or None
            row["attached"] = attached_row(dev)
            row["attached_total"] = len(dev.handles)
            row["partials"] = dev.fault_param.n_partials
            devices.append(row)
        return {"iommus": iommus, "devices": devices}

    def objects(self, offset: int = 0, limit: int | None = None) -> list[dict[str, object]]:
        """The admin ``objects`` rows ``[offset, offset + limit)``; only those are built."""
        objs = (obj for ctx in self.contexts.values() for obj in ctx.objects.values())
        end = None if limit is None else offset + limit
        return [obj.describe() for obj in itertools.islice(objs, offset, end)]

    def object_count(self) -> int:
        return sum(len(ctx.objects) for ctx in self.contexts.values())

    def pending(
        self, now: int, offset: int = 0, limit: int | None = None
    ) -> list[dict[str, object]]:
        """The admin ``pending`` rows ``[offset, offset + limit)``; only those are built."""
        groups = ((fq, c, g) for fq in self._fault_queues() for c, g in fq.groups.items())
        end = None if limit is None else offset + limit
        rows: list[dict[str, object]] = []
        for fq, cookie, group in itertools.islice(groups, offset, end):
            flags, pasid, grpid = group.last[0], group.last[1], group.last[2]
            rows.append(
                {
                    "fault_id": fq.id,
                    "cookie": cookie,
                    "rid": group.dev.name,
                    "pasid": pasid if flags & PASID_VALID else None,
                    "age_s": max(0, now - group.t_ns) / 1e9,
                    "client": fq.ctx.label,
                    "dev_id": group.dev.dev_id,
                    "grpid": grpid,
                }
            )
        return rows


__all__ = ["MAX_SERVICE_ROUNDS", "STATUS_COUNTERS", "Core"]
