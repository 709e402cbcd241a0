"""Helpers for tests, benches and demos of the core (like ``hwmodel.testing``).

Not used by the core itself. ``Env`` is a machine, a core, one context and a clock;
``check_invariants`` asserts the exactly-once and no-stale-translation invariants.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, overload

from hwmodel import (
    IommuUnit,
    Machine,
    PageGroupResponseDescriptor,
    Perm,
    TopologySpec,
    default_topology,
)
from iopfd.core.context import Context
from iopfd.core.core import Core
from iopfd.core.errors import CoreLimits
from iopfd.core.eventq import FaultQueue
from iopfd.core.events import CoreEvent, DmaDone, FaultDelivered, Trace
from iopfd.core.hw_pagetable import HwPagetable
from iopfd.core.io_pgfault import PENDING
from iopfd.core.profile import DEFAULT_KERNEL, kernel_profile

ACCEL = "0000:3a:00.0"
NIC_PF = "0000:3b:00.0"
NIC_VF0 = "0000:3b:00.1"
ATS_NO_PRI = "0000:3c:00.0"
ACCEL1 = "0000:5a:00.0"
NO_PASID = "0000:5b:00.0"
LEGACY = "0000:5c:00.0"

RW = 3


class Env:
    """One core over one machine, a clock, and helpers that keep tests short."""

    def __init__(
        self,
        topo: TopologySpec | None = None,
        limits: CoreLimits | None = None,
        kernel: str = DEFAULT_KERNEL,
        **machine_kw: int,
    ) -> None:
        self.machine = Machine(topo or default_topology(), **machine_kw)
        self.core = Core(self.machine, limits, kernel_profile(kernel))
        self.now = 1_000_000
        self.ctx = self.core.open_context("vmm")
        self.events: list[CoreEvent] = []
        # Every page group response the units executed, in order: (unit, descriptor).
        self.responses: list[tuple[str, PageGroupResponseDescriptor]] = []
        for unit in self.machine.iommus.values():
            self._record(unit)

    def _record(self, unit: IommuUnit) -> None:
        name = unit.name

        def tap(resp: PageGroupResponseDescriptor) -> None:
            self.responses.append((name, resp))

        unit.response_tap = tap

    # ---- time and events
    def service(self) -> list[CoreEvent]:
        self.core.service(self.now)
        ev = self.core.take_events()
        self.events.extend(ev)
        return ev

    def tick(self, ns: int = 10_000_000) -> list[CoreEvent]:
        self.now += ns
        return self.service()

    def settle(self, rounds: int = 40) -> list[CoreEvent]:
        """Advance time until the machine has nothing due."""
        out: list[CoreEvent] = []
        for _ in range(rounds):
            out += self.tick()
            if self.core.next_deadline() is None:
                break
        return out

    # ---- setup
    @overload
    def fault_hwpt(
        self,
        rid: str = ...,
        pasid: int | None = ...,
        ctx: Context | None = ...,
        *,
        fault: Literal[True] = ...,
        nested: bool | None = ...,
    ) -> tuple[int, int, int, int]: ...

    @overload
    def fault_hwpt(
        self,
        rid: str = ...,
        pasid: int | None = ...,
        ctx: Context | None = ...,
        *,
        fault: Literal[False],
        nested: bool | None = ...,
    ) -> tuple[int, int, None, int]: ...

    def fault_hwpt(
        self,
        rid: str = ACCEL,
        pasid: int | None = 5,
        ctx: Context | None = None,
        *,
        fault: bool = True,
        nested: bool | None = None,
    ) -> tuple[int, int, int | None, int]:
        """bind + IOAS + fault queue + HWPT, attached; (dev_id, ioas, fq, hwpt).

        The HWPT is a paging one, or a nested one on a nesting parent with an identity
        stage 1 (``map``) when ``nested`` says so, or by default where the kernel
        profile has no fault-capable paging HWPT (6.12). Under 6.18 a PASID attach
        needs the ``pasid`` flag, so it is given for one."""
        ctx = ctx or self.ctx
        profile = self.core.profile
        dev_id = ctx.bind(rid, self.now)
        ioas = ctx.ioas_alloc()
        fq = ctx.fault_alloc() if fault else None
        flags = ["pasid"] if pasid is not None and profile.pasid_attach else []
        if nested is None:
            nested = fault and not profile.paging_fault_hwpt
        if nested:
            parent = ctx.hwpt_alloc(dev_id, ioas, ["nest_parent"], None, None)
            hwpt = ctx.hwpt_alloc(dev_id, parent, flags, fq, {"type": "vtd_s1"})
        else:
            hwpt = ctx.hwpt_alloc(dev_id, ioas, flags, fq, None)
        ctx.attach(dev_id, hwpt, pasid, self.now)
        return dev_id, ioas, fq, hwpt

    def map(self, ioas: int, hwpt: int, iova: int, length: int, ctx: Context | None = None) -> None:
        """Map ``[iova, iova + length)`` for ``hwpt``: the IOAS identity, and for a nested
        HWPT its stage 1 too (iova -> the same gpa), as a guest would."""
        ctx = ctx or self.ctx
        ctx.ioas_map(ioas, iova, length, RW, self.now)
        obj = ctx.objects[hwpt]
        if isinstance(obj, HwPagetable) and obj.is_nested:
            ctx.hwpt_s1_map(hwpt, iova, length, iova, RW)

    def inject(
        self,
        rid: str,
        pasid: int | None,
        addr: int,
        grpid: int,
        *,
        last: bool = True,
        perm: int = RW,
    ) -> None:
        self.core.emulation.inject(rid, pasid, addr, perm, grpid, last, self.now)


def faults_of(events: Iterable[CoreEvent]) -> list[FaultDelivered]:
    return [e for e in events if isinstance(e, FaultDelivered)]


def dma_done(events: Iterable[CoreEvent]) -> list[DmaDone]:
    return [e for e in events if isinstance(e, DmaDone)]


def traces(events: Iterable[CoreEvent], topic: str) -> list[Trace]:
    return [e for e in events if isinstance(e, Trace) and e.topic == topic]


def check_invariants(env: Env) -> None:
    """The issue's invariants, checked from outside and inside."""
    core = env.core
    c = core.status_counters()
    pending_rows = core.pending(env.now)
    # Exactly once, visible from outside.
    assert c["groups"] == c["responses"] + c["auto_responses"] + c["throttled"] + len(
        pending_rows
    ), c
    assert core.counters["double_answers_prevented"] == 0
    # A second answer to a group reaches the device as an unexpected PRGI. The only
    # legitimate source: requests answered INVALID on arrival for want of a handler
    # (``iopf_error_response`` answers non-last requests too, PROTOCOL.md v2 item 4),
    # each of which can add at most one answer beyond the one the group needed.
    uprgi = sum(fn.counters["unexpected_prgi"] for fn in env.machine.functions.values())
    assert uprgi <= core.counters["no_handler_partial_responses"], (
        uprgi,
        core.counters["no_handler_partial_responses"],
    )
    fqs = [
        o
        for ctx in core.contexts.values()
        for o in ctx.objects.values()
        if isinstance(o, FaultQueue)
    ]
    hwpts = [
        o
        for ctx in core.contexts.values()
        for o in ctx.objects.values()
        if isinstance(o, HwPagetable)
    ]
    per_domain: dict[int, int] = {}
    for fq in fqs:
        # Memory bounded; no group pending for an attachment that is gone.
        assert len(fq.groups) <= core.limits.max_pending
        for cookie, group in fq.groups.items():
            assert group.state == PENDING
            assert cookie < fq.next_cookie
            att = group.attach
            assert group.dev.handles.get(att.pasid) is att, "group of a gone attachment"
            assert att.groups.get(cookie) is group
            assert att.fault is fq
            per_domain[id(att.domain)] = per_domain.get(id(att.domain), 0) + 1
    for hwpt in hwpts:
        assert hwpt.domain.pending == per_domain.get(id(hwpt.domain), 0)
    for dev in core.devices.values():
        param = dev.fault_param
        info = dev.info
        assert param.n_partials == sum(len(v) for v in param.partials.values())
        assert param.n_partials <= core.limits.max_partials_per_device
        fault_atts = sum(1 for a in dev.handles.values() if a.fault is not None)
        assert info.iopf_refcount == fault_atts
        if fault_atts == 0:
            assert param.n_partials == 0, "partials outlived the last fault-capable attachment"
        if dev.removed:
            continue
        ctxe = info.unit.context(info.sid)
        assert ctxe is not None
        if core.profile.pri_at_probe:
            # 6.18: PRI and PRE on from probe for every PRI-capable function.
            assert info.pri_enabled == info.pri_supported
            assert ctxe.pre == info.pri_supported
            if info.pri_supported:
                assert dev.fn.pri.enabled
        elif not dev.is_vf:
            # 6.12: PRI follows the fault-capable attachments.
            assert dev.fn.pri.enabled == (fault_atts > 0)
            assert ctxe.pre == (fault_atts > 0)
    check_no_stale_translation(env)


def check_no_stale_translation(env: Env) -> None:
    """Every cached translation (IOTLB, ATC) agrees with the page tables as they are now.

    (A stage-1 unmap without ``hwpt_invalidate`` legitimately leaves stale entries; the
    tests that check this never leave one pending.)
    """
    core = env.core
    for us in core.units.values():
        unit = us.unit
        owners: dict[int, HwPagetable] = {}
        for hwpt in _all_hwpts(core):
            entry = hwpt.domain.dids.get(unit.name)
            if entry is not None:
                owners[entry[0]] = hwpt
        for did, bucket in unit._iotlb.items():  # introspection: the model's IOTLB
            if not bucket:
                continue
            owner = owners.get(did)
            assert owner is not None, f"{unit.name}: IOTLB entries for free DID {did}"
            for (_tag, page), (target, perm, _pgtt) in bucket.items():
                assert _walk(owner, page) == (target, perm), (unit.name, did, page)
    for dev in core.devices.values():
        fn = dev.fn
        for (pasid, page), (target, perm) in fn.atc.items():
            att = dev.handles.get(pasid)
            assert att is not None, f"{dev.name}: ATC entry for unattached pasid {pasid}"
            assert _walk(att.hwpt, page) == (target, perm), (dev.name, pasid, page)


def _all_hwpts(core: Core) -> list[HwPagetable]:
    return [
        o
        for ctx in core.contexts.values()
        for o in ctx.objects.values()
        if isinstance(o, HwPagetable)
    ]


def _walk(hwpt: HwPagetable, page: int) -> tuple[int, int] | None:
    d = hwpt.domain
    if d.s1 is None:
        return d.s2.lookup_page(page)
    s1 = d.s1.lookup_page(page)
    if s1 is None:
        return None
    s2 = d.s2.lookup_page(s1[0])
    if s2 is None:
        return None
    rw = int(Perm.READ | Perm.WRITE)
    return s2[0], (s1[1] & s2[1] & rw) | (s1[1] & int(Perm.EXEC | Perm.PRIV))
