"""The core: the kernel's side of iopfd, driven by the daemon (docs/architecture.md).

``Core`` owns the driver state of every unit and device, the contexts (one per
client) and the event list the daemon drains after each call. ``service(now)`` is the
interrupt path: it advances the machine and runs the PRQ thread of every unit whose
page-request event fired, until nothing more is due at ``now``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hwmodel import (
    InvDescriptor,
    IommuUnit,
    Machine,
    PageRequestDescriptor,
    PriError,
    Rid,
)
from iopfd.core import device as devops
from iopfd.core.context import Context, DmaTag
from iopfd.core.errors import EBUSY, EINVAL, ENODEV, ENOENT, CoreError, CoreLimits
from iopfd.core.eventq import FaultQueue
from iopfd.core.events import CoreEvent, DeviceRequest, DmaDone, Trace, UnplugDone
from iopfd.core.intel.cache import DEVTLB_MASK_ALL, FlushPlan, devtlb_descriptor
from iopfd.core.intel.dmar import WAIT_FENCE, qi_submit_flush, qi_submit_sync
from iopfd.core.intel.iommu import (
    PRQ_DEPTH,
    DeviceInfo,
    UnitState,
    enable_dev_features,
    probe,
    release,
)
from iopfd.core.intel.prq import prq_event_thread
from iopfd.core.io_pgfault import (
    PASID_VALID,
    discard_partials,
    flush_responses,
)
from iopfd.core.objects import IdAllocator
from iopfd.core.profile import DEFAULT_KERNEL, KernelProfile, kernel_profile

#: Counters every ``status`` shows, even at zero (docs/protocol.md, *Admin*).
STATUS_COUNTERS = (
    "page_requests", "groups", "delivered", "responses", "auto_responses", "throttled",
    "prq_overflows", "invalidations", "bad_requests", "hw_auto_responses",
    "partials_discarded", "stop_markers", "drains", "dma_started", "dma_completed",
    "no_handler_responses", "unexpected_prgi", "resets", "unplugs", "forced_unplugs",
)
#: Seconds an ``unplug`` waits for the owners to release the device (PROTOCOL.md v2
#: item 9); vfio-pci re-sends its request every 10 s and never gives up.
DEFAULT_UNPLUG_GRACE_NS = 10_000_000_000
#: ``service`` stops after this many PRQ passes at one ``now`` (a guard, never reached
#: in practice: the device's retries come after a back-off, so time must move on).
MAX_SERVICE_ROUNDS = 1024


@dataclass
class Removal:
    """An ``unplug`` waiting for the owners of its functions to release them."""

    dev: DeviceInfo
    victims: list[DeviceInfo]
    deadline: int
    ctx: Context | None
    tag: object


@dataclass
class FlushStats:
    """The invalidations one unmap (or hwpt_invalidate) issued."""

    reason: str = ""
    iotlb: int = 0
    devtlb: int = 0
    waits: int = 0
    units: int = 0
    per_unit: dict[str, int] = field(default_factory=dict)

    @property
    def descriptors(self) -> int:
        return self.iotlb + self.devtlb


class Core:
    """The kernel: intel driver, io-pgfault and iommufd, over a ``hwmodel.Machine``."""

    def __init__(self, machine: Machine, limits: CoreLimits | None = None,
                 profile: KernelProfile | None = None) -> None:
        self.machine = machine
        self.limits = limits if limits is not None else CoreLimits()
        self.profile = profile if profile is not None else kernel_profile(DEFAULT_KERNEL)
        self.counters: Counter[str] = Counter()
        self.events: list[CoreEvent] = []
        #: False: the hot path builds no Trace records (nobody subscribed).
        self.trace_enabled = False
        self.ids = IdAllocator()
        self.contexts: dict[int, Context] = {}
        self._next_ctx = 1
        self.last_flush = FlushStats()
        # Page group responses waiting for the end of the current operation, per unit.
        # Page group response images queued per unit until the operation ends.
        self.responses_out: dict[str, tuple[IommuUnit, list[bytes]]] = {}
        self.units: dict[str, UnitState] = {
            name: UnitState(unit, i) for i, (name, unit) in enumerate(machine.iommus.items())
        }
        self.devices: dict[str, DeviceInfo] = {}
        #: Removals waiting for owners to release their devices, by the unplugged rid.
        self.removals: dict[str, Removal] = {}
        for name, fn in machine.functions.items():
            self.devices[name] = DeviceInfo(fn, self.units[fn.iommu.name])
        # PFs first: a VF's PRI is its PF's, enabled before it (profile 6.18).
        for dev in sorted(self.devices.values(), key=lambda d: d.is_vf):
            if dev.fn.present:
                probe(dev, self.profile, self.counters)
            else:
                dev.state = "removed"

    # ------------------------------------------------------------------ contexts
    def open_context(self, label: str) -> Context:
        ctx = Context(self, self._next_ctx, label)
        self._next_ctx += 1
        self.contexts[ctx.id] = ctx
        return ctx

    def close_context(self, ctx: Context, now: int) -> None:
        """Release everything ``ctx`` owns; its pending groups are answered INVALID."""
        if ctx.closed:
            return
        ctx.teardown(now)
        self.contexts.pop(ctx.id, None)

    def bind_device(self, dev: DeviceInfo, ctx: Context, dev_id: int) -> None:
        dev.state = "bound"
        dev.owner = ctx
        dev.dev_id = dev_id
        enable_dev_features(dev)
        if self.trace_enabled:
            self.trace("device", rid=dev.name, state="bound", client=ctx.label)

    def unbind_device(self, dev: DeviceInfo) -> None:
        dev.state = "free"
        dev.owner = None
        dev.dev_id = 0
        if self.trace_enabled:
            self.trace("device", rid=dev.name, state="free")

    # ------------------------------------------------------------------ service
    def service(self, now: int) -> None:
        machine = self.machine
        units = self.units
        for _ in range(MAX_SERVICE_ROUNDS):
            machine.advance(now)
            fired = machine.take_interrupts()
            if not fired:
                break
            for unit in fired:
                prq_event_thread(self, units[unit.name], now)
        else:
            self.counters["service_round_limit"] += 1
        flush_responses(self)  # nothing should be left; never let an answer linger
        if self.removals:
            self._service_removals(now)
        for t in machine.take_completed():
            self.counters["dma_completed"] += 1
            tag = t.tag
            if isinstance(tag, DmaTag) and not tag.ctx.closed:
                self.events.append(DmaDone(tag.ctx, tag.tag, t.status.value if t.status
                                           else "failure", t.faults, t.bytes))

    def next_deadline(self) -> int | None:
        deadline = self.machine.next_deadline()
        for removal in self.removals.values():
            if deadline is None or removal.deadline < deadline:
                deadline = removal.deadline
        return deadline

    def take_events(self) -> list[CoreEvent]:
        events = self.events
        self.events = []
        return events

    def trace(self, topic: str, **record: object) -> None:
        self.events.append(Trace(topic, record))

    # ------------------------------------------------------------------ invalidation
    def submit_flush(self, plan: FlushPlan, reason: str, now: int) -> FlushStats:
        """Issue a flush plan: per unit, its invalidations then one wait."""
        stats = FlushStats(reason=reason, iotlb=plan.iotlb, devtlb=plan.devtlb,
                           units=len(plan.per_unit))
        for name, (unit, descs, _seen) in plan.per_unit.items():
            stats.waits += qi_submit_flush(unit, descs, self.counters)
            stats.per_unit[name] = len(descs)
        self.counters["flushes"] += 1
        self.last_flush = stats
        if self.trace_enabled and stats.descriptors:
            self.trace("invalidation", reason=reason, iotlb=stats.iotlb, devtlb=stats.devtlb,
                       waits=stats.waits, units=stats.units, t_ns=now)
        return stats

    # ------------------------------------------------------------------ admin
    def _admin_device(self, rid: str) -> DeviceInfo:
        try:
            name = str(Rid.parse(rid))
        except ValueError as e:
            raise CoreError(EINVAL, str(e)) from None
        dev = self.devices.get(name)
        if dev is None:
            raise CoreError(ENOENT, f"no device {name}")
        return dev

    def device_list(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for dev in self.devices.values():
            fn = dev.fn
            pri = fn.pri
            rows.append({
                "rid": dev.name,
                "iommu": dev.unit.name,
                "pri": bool(fn.spec.pri),
                "ats": bool(fn.spec.ats),
                "pasid_bits": fn.spec.pasid_bits,
                "pf": str(fn.pf.rid) if fn.pf is not None else None,
                "state": dev.state,
                "removing": dev.name in self.removals,
                "ats_enabled": bool(fn.ats_enabled),
                "pri_enabled": bool(pri.enabled) and dev.pri_enabled,
                "pri_status": {"response_failure": bool(pri.response_failure),
                               "unexpected_prgi": bool(pri.unexpected_prgi),
                               "stopped": bool(pri.stopped)},
            })
        return rows

    def pending_count(self) -> int:
        return sum(len(o.groups) for ctx in self.contexts.values()
                   for o in ctx.objects.values() if isinstance(o, FaultQueue))

    def status_counters(self) -> dict[str, int]:
        out = dict.fromkeys(STATUS_COUNTERS, 0)
        out.update(self.counters)
        out["hw_auto_responses"] = sum(u.unit.counters["hw_auto_responses"]
                                       for u in self.units.values())
        out["unexpected_prgi"] = sum(f.counters["unexpected_prgi"]
                                     for f in self.machine.functions.values())
        out["pending"] = self.pending_count()
        return out

    def topology(self) -> dict[str, object]:
        iommus = []
        for us in self.units.values():
            unit = us.unit
            iommus.append({
                "name": unit.name,
                "segment": unit.spec.segment,
                "prq_entries": unit.prq.entries,
                "prq_used": unit.prq.used,
                "prs": unit.read_prs(),
                "nest": unit.spec.nest,
                "pasid_bits": unit.spec.pasid_bits,
                "dids_in_use": us.dids_in_use(),
                "devices": [d.name for d in self.devices.values() if d.ustate is us],
            })
        devices = []
        for row, dev in zip(self.device_list(), self.devices.values(), strict=True):
            row = dict(row)
            row["owner"] = dev.owner.label if dev.owner is not None else None
            row["dev_id"] = dev.dev_id or None
            row["attached"] = {("rid" if p is None else str(p)): a.hwpt.id
                               for p, a in dev.attachments.items()}
            row["partials"] = dev.n_partials
            devices.append(row)
        return {"iommus": iommus, "devices": devices}

    def objects(self) -> list[dict[str, object]]:
        return [obj.describe() for ctx in self.contexts.values()
                for obj in ctx.objects.values()]

    def pending(self, now: int) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for ctx in self.contexts.values():
            for obj in ctx.objects.values():
                if not isinstance(obj, FaultQueue):
                    continue
                for cookie, group in obj.groups.items():
                    flags, pasid, grpid = group.last[0], group.last[1], group.last[2]
                    rows.append({
                        "fault_id": obj.id, "cookie": cookie, "rid": group.dev.name,
                        "pasid": pasid if flags & PASID_VALID else None,
                        "age_s": max(0, now - group.t_ns) / 1e9,
                        "client": ctx.label, "dev_id": group.dev.dev_id, "grpid": grpid,
                    })
        return rows

    def inject(  # noqa: PLR0917 - the documented public API
        self, rid: str, pasid: int | None, addr: int, perm: int, grpid: int,
               last: bool, now: int) -> None:
        """Write one raw page request as if the device had sent it (admin ``inject``)."""
        dev = self._admin_device(rid)
        if dev.state == "removed":
            raise CoreError(ENODEV, f"{dev.name} was removed")
        if pasid is not None and not 0 <= pasid < 1 << 20:
            raise CoreError(EINVAL, f"pasid {pasid!r} does not fit 20 bits")
        if not 0 <= grpid < 1 << 9:
            raise CoreError(EINVAL, f"grpid {grpid!r} does not fit 9 bits")
        if not 0 <= addr < 1 << 64 or addr & 0xFFF:
            raise CoreError(EINVAL, f"addr {addr!r} is not a page address")
        if not 0 <= perm <= 0xF:
            raise CoreError(EINVAL, f"perm {perm!r} out of range")
        desc = PageRequestDescriptor(
            sid=dev.sid, pasid_present=pasid is not None, pasid=pasid or 0,
            exe_req=bool(perm & 4), pm_req=bool(perm & 8), rd_req=bool(perm & 1),
            wr_req=bool(perm & 2), lpig=bool(last), prg_index=grpid, addr=addr)
        self.machine.inject_page_request(dev.rid, desc, now)
        self.counters["injected"] += 1

    def unplug(self, rid: str, now: int, *, force: bool = False,
               grace_ns: int = DEFAULT_UNPLUG_GRACE_NS, ctx: Context | None = None,
               tag: object = None) -> bool:
        """Hot removal as vfio-pci's remove path does it (``vfio_unregister_group_dev``):
        each owner of the function (a PF takes its VFs) gets a ``DeviceRequest`` and may
        finish and unbind; its pending groups stay answerable meanwhile. Once every
        owner released, or after ``grace_ns`` (at once with ``force``), the functions
        are removed (``_remove``). True: removed now; False: an ``UnplugDone`` event
        with ``ctx`` and ``tag`` comes when it is."""
        dev = self._admin_device(rid)
        if dev.state == "removed":
            raise CoreError(EINVAL, f"{dev.name} is already removed")
        if dev.name in self.removals or any(dev in r.victims for r in self.removals.values()):
            raise CoreError(EBUSY, f"a removal of {dev.name} is already in progress")
        victims = [self.devices[str(vf.rid)] for vf in dev.fn.vfs if vf.present]
        victims.append(dev)
        bound = [v for v in victims if v.state == "bound"]
        if force or not bound:
            self._remove(dev, victims, now, forced=bool(bound))
            return True
        self.removals[dev.name] = Removal(dev, victims, now + grace_ns, ctx, tag)
        for v in bound:
            assert v.owner is not None
            self.events.append(DeviceRequest(v.owner, v.dev_id, v.name))
            self.counters["device_requests"] += 1
            if self.trace_enabled:
                self.trace("device", rid=v.name, state="removing", client=v.owner.label,
                           t_ns=now)
        return False

    def removing(self, dev: DeviceInfo) -> bool:
        """Whether an ``unplug`` is waiting for ``dev``'s owner (binding it is refused)."""
        return any(dev in r.victims for r in self.removals.values())

    def _service_removals(self, now: int) -> None:
        for name, removal in list(self.removals.items()):
            held = any(v.state == "bound" for v in removal.victims)
            if held and now < removal.deadline:
                continue
            del self.removals[name]
            self._remove(removal.dev, removal.victims, now, forced=held)
            self.events.append(UnplugDone(removal.ctx, removal.tag, name, held))

    def _remove(self, dev: DeviceInfo, victims: list[DeviceInfo], now: int, *,
                forced: bool) -> None:
        """The removal itself (seed 000): stop DMA, detach all (drain, auto-respond), PRI
        off, drain again, release; a still-bound owner's ``dev_id`` then gives
        ``ENODEV``. A PF takes its VFs with it, as the machine does."""
        # The driver stops DMA first (vtd-hw.md 6.4): a transfer in flight ends
        # `removed`, and the page requests it sent are settled by the drains below.
        self.machine.stop_dma(dev.rid, now)
        for victim in victims:
            for pasid in list(victim.attachments):
                devops.detach(self, victim, pasid, now, "unplug")
        if not dev.is_vf and dev.fn.pri.enabled:
            dev.fn.pri.disable()
        for victim in victims:
            self._final_drain(victim, now)
        self.machine.hot_remove(dev.rid, now)
        if forced:
            self.counters["forced_unplugs"] += 1
        for victim in victims:
            release(victim)
            owner = victim.owner
            if owner is not None:
                owner.device_removed(victim.dev_id)
            victim.state = "removed"
            victim.owner = None
            victim.dev_id = 0
            self.counters["unplugs"] += 1
            if self.trace_enabled:
                self.trace("device", rid=victim.name, state="removed", forced=forced,
                           t_ns=now)

    def _final_drain(self, dev: DeviceInfo, now: int) -> None:
        """Fence the function against the PRQ once PRI is off: anything it had posted
        lands in the queue and is answered; then no partial of it survives."""
        if dev.unit.spec.pds:
            descs: list[InvDescriptor] = [WAIT_FENCE]
            if dev.fn.ats_enabled:
                descs.append(devtlb_descriptor(dev.sid, dev.pfsid, None, 0, DEVTLB_MASK_ALL))
            qi_submit_sync(dev.unit, descs, self.counters, drain=True)
            self.counters["drains"] += 1
        prq_event_thread(self, dev.ustate, now)
        discard_partials(self, dev, all_pasids=True)

    def plug(self, rid: str, now: int) -> None:
        """Bring a removed function back as ``free`` (a PF brings its VFs back too)."""
        dev = self._admin_device(rid)
        if dev.state != "removed":
            raise CoreError(EINVAL, f"{dev.name} is present")
        try:
            self.machine.hot_plug(dev.rid, now)
        except ValueError as e:
            raise CoreError(EINVAL, str(e)) from None
        for d in [dev, *(self.devices[str(vf.rid)] for vf in dev.fn.vfs)]:
            if d.state == "removed" and d.fn.present:
                d.state = "free"
                probe(d, self.profile, self.counters)
                self.counters["plugs"] += 1
                if self.trace_enabled:
                    self.trace("device", rid=d.name, state="free", t_ns=now)

    def reset(self, rid: str, now: int) -> None:
        """Admin ``reset``: the same function-level reset as the owner's ``device_reset``."""
        dev = self._admin_device(rid)
        self.flr(dev, now)

    def flr(self, dev: DeviceInfo, now: int) -> None:
        """``VFIO_DEVICE_RESET`` (``pci_try_reset_function``): save the config space, FLR,
        restore it; ``pci_restore_ats_state`` and ``pci_restore_pri_state`` bring ATS and
        an enabled PRI back. The function forgets its outstanding page requests (PCIe
        terminal condition, SPEC 7.9: credits back, answers that match nothing are
        discarded) and a Response Failure is cleared. iommufd is not told: fault queues,
        pending groups and attachments stay as they are, and the groups stay answerable
        (``pci_dev_reset_iommu_prepare`` came after 6.18)."""
        if dev.state == "removed":
            raise CoreError(ENODEV, f"{dev.name} was removed")
        fn = dev.fn
        pri_was_enabled = fn.pf is None and fn.pri.enabled
        self.machine.flr(dev.rid, now)
        # The function forgot the groups its set-aside requests belong to: the kernel
        # keeps them for the next group with that index, iopfd frees them.
        discard_partials(self, dev, all_pasids=True)
        if pri_was_enabled:
            try:
                fn.pri.enable(PRQ_DEPTH)
            except PriError as e:  # pragma: no cover - the FLR left PRI disabled, stopped
                self.counters["pri_enable_errors"] += 1
                raise CoreError(EBUSY, f"{dev.name}: PRI not restored: {e}") from None
        self.counters["resets"] += 1
        if self.trace_enabled:
            self.trace("device", rid=dev.name, state=dev.state, reset=True, t_ns=now)
