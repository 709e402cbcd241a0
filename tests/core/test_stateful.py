"""Random interleavings of everything a client, an admin and the hardware can do.

Both kernel profiles. After every step: every completed group answered at most once
and exactly once when it leaves the pending set; no answer to a group that is gone;
``groups == responses + auto_responses + throttled + pending``; no cached translation
disagrees with the page tables; fault queues and partial lists stay within their
bounds. On the device side: each answer a client gives reaches the function as one
page group response with the group's RID, PASID and PRG index; unexpected PRG indices
come only from requests answered on arrival for want of a handler (per function);
an FLR keeps every pending group pending; an unplug that waits keeps its device's
groups answerable and completes exactly once, drained.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from hwmodel import IommuSpec, TopologySpec, default_topology
from iopfd.core import (
    Context,
    CoreError,
    CoreLimits,
    DeviceRequest,
    FaultDelivered,
    Trace,
    UnplugDone,
)
from iopfd.core.eventq import FaultQueue
from iopfd.core.hw_pagetable import HwPagetable
from iopfd.core.testing import (
    ACCEL,
    ACCEL1,
    NIC_PF,
    NIC_VF0,
    NO_PASID,
    RW,
    Env,
    check_invariants,
)

RIDS = [ACCEL, NIC_PF, NIC_VF0, ACCEL1, NO_PASID]
PASIDS = [None, 5, 6]
BASE = 0x100_0000  # the region DMAs and injected requests touch (16 pages)
NPAGES = 16
NESTED_IOVA = 0x800_0000  # nested HWPTs map this window onto BASE
ERRNOS = {"EINVAL", "ENOENT", "EBUSY", "EOPNOTSUPP", "ENODEV", "ENOSPC"}


def _chance(data: st.DataObject, n: int) -> bool:
    """True n times in n + 1 draws: mostly the common case, now and then the other."""
    drawn: int = data.draw(st.integers(0, n))
    return drawn != 0


class CoreStateMachine(RuleBasedStateMachine):
    @initialize(kernel=st.sampled_from(["6.12", "6.18"]))
    def setup(self, kernel: str) -> None:
        topo = default_topology()
        topo = TopologySpec((IommuSpec("dmar0", prq_order=0), IommuSpec("dmar1")), topo.functions)
        self.env = Env(
            topo, limits=CoreLimits(max_pending=3, max_partials_per_device=24), kernel=kernel
        )
        self.env.core.trace_enabled = True
        self.ctxs: list[Context] = [self.env.ctx, self.env.core.open_context("b")]
        self.delivered: set[tuple[int, int]] = set()
        self.answered: set[tuple[int, int]] = set()
        #: Requests answered on arrival for want of a handler, non-last, per device.
        self.early_answers: dict[str, int] = {}
        #: Unplugs waiting for owners: rid -> tag; and the tags that completed.
        self.removals: dict[str, int] = {}
        self.unplugs_done: set[int] = set()
        self._tags = 0
        self._setup(self.ctxs[0], ACCEL, 5, fault=True, kind="paging")
        self._setup(self.ctxs[0], ACCEL, None, fault=True, kind="nested")
        self._setup(self.ctxs[1], ACCEL1, None, fault=True, kind="paging")

    def _setup(
        self,
        ctx: Context,
        rid: str,
        pasid: int | None,
        *,
        fault: bool,
        kind: str,
        compat: bool = True,
    ) -> None:
        """bind (if needed), a HWPT of ``kind``, then attach or replace: one step."""
        now = self.env.now
        info = self.env.core.devices[rid]
        owner = info.binding.ctx if info.binding is not None else None
        if owner is None and info.state == "free":
            self._try(ctx.bind, rid, now)
        if info.binding is None or info.binding.ctx is not ctx:
            return
        dev = info.dev_id
        fq = None
        if fault:
            fqs = [i for i, o in ctx.objects.items() if isinstance(o, FaultQueue)]
            fq = fqs[-1] if fqs and len(fqs) > 1 else ctx.fault_alloc()
        ioas = self._ioas(ctx)
        if kind == "nested":
            parents = [
                i for i, o in ctx.objects.items() if isinstance(o, HwPagetable) and o.nest_parent
            ]
            flags = ["pasid"] if compat and self.env.core.profile.pasid_attach else []
            parent = (
                parents[0]
                if parents
                else self._try(ctx.hwpt_alloc, dev, ioas, ["nest_parent", *flags], None, None)
            )
            if not isinstance(parent, int):
                return
            hwpt = self._try(ctx.hwpt_alloc, dev, parent, flags, fq, {"type": "vtd_s1"})
            if not isinstance(hwpt, int):
                return
            ctx.hwpt_s1_map(hwpt, NESTED_IOVA, NPAGES * 4096, BASE, RW)
        else:
            flags = ["pasid"] if compat and self.env.core.profile.pasid_attach else []
            hwpt = self._try(
                ctx.hwpt_alloc,
                dev,
                ioas,
                ["nest_parent", *flags] if kind == "parent" else flags,
                fq,
                None,
            )
            if not isinstance(hwpt, int):
                return
        op = ctx.replace if pasid in info.handles else ctx.attach
        self._try(op, dev, hwpt, pasid, now)

    # ---------------------------------------------------------------- helpers
    def _try(self, fn: object, *args: object, **kw: object) -> object:
        try:
            return fn(*args, **kw)  # type: ignore[operator]
        except CoreError as e:
            assert e.errno in ERRNOS, e
            return None

    def _ctx(self, data: st.DataObject) -> Context:
        return self.ctxs[data.draw(st.integers(0, len(self.ctxs) - 1))]

    def _obj(self, ctx: Context, data: st.DataObject, cls: type) -> int:
        ids = sorted(i for i, o in ctx.objects.items() if isinstance(o, cls))
        # Now and then an ID that is not there (or not of that kind): errors are part of it.
        if not ids or data.draw(st.integers(0, 9)) == 0:
            return data.draw(st.integers(1, 200))
        return data.draw(st.sampled_from(ids))

    def _dev(self, ctx: Context, data: st.DataObject) -> int:
        ids = sorted(i for i, o in ctx.objects.items() if o.kind == "device")
        if not ids or data.draw(st.integers(0, 9)) == 0:
            return 999_999
        return data.draw(st.sampled_from(ids))

    def _pasid(self, ctx: Context, dev: int, data: st.DataObject) -> int | None:
        """Mostly a PASID the device is attached at."""
        idev = ctx.objects.get(dev)
        attached = list(idev.dev.handles) if idev is not None and hasattr(idev, "dev") else []
        if attached and _chance(data, 3):
            pasid: int | None = data.draw(st.sampled_from(attached))
            return pasid
        return data.draw(st.sampled_from(PASIDS))

    def _ioas(self, ctx: Context) -> int:
        for i, o in ctx.objects.items():
            if o.kind == "ioas":
                return i
        return ctx.ioas_alloc()

    # ---------------------------------------------------------------- client rules
    @rule(
        data=st.data(),
        rid=st.sampled_from(RIDS),
        pasid=st.sampled_from(PASIDS),
        fault=st.booleans(),
        kind=st.sampled_from(["paging", "parent", "nested"]),
        compat=st.sampled_from([True, True, False]),
    )
    def attach_new_hwpt(
        self, data: st.DataObject, rid: str, pasid: int | None, fault: bool, kind: str, compat: bool
    ) -> None:
        self._setup(self._ctx(data), rid, pasid, fault=fault, kind=kind, compat=compat)

    @rule(data=st.data(), rid=st.sampled_from(RIDS))
    def bind(self, data: st.DataObject, rid: str) -> None:
        self._try(self._ctx(data).bind, rid, self.env.now)

    @rule(data=st.data())
    def unbind(self, data: st.DataObject) -> None:
        ctx = self._ctx(data)
        dev = self._dev(ctx, data)
        obj = ctx.objects.get(dev)
        info = getattr(obj, "dev", None)
        pasids = list(info.handles) if info is not None and info.fn.pri.enabled else []
        self._try(ctx.unbind, dev, self.env.now)
        if info is not None and dev not in ctx.objects and pasids:
            self._assert_drained(info.name, pasids)

    @rule(
        data=st.data(),
        fault=st.booleans(),
        kind=st.sampled_from(["paging", "parent", "nested"]),
        compat=st.booleans(),
    )
    def hwpt_alloc(self, data: st.DataObject, fault: bool, kind: str, compat: bool) -> None:
        ctx = self._ctx(data)
        dev = self._dev(ctx, data)
        fq = None
        if fault:
            fqs = [i for i, o in ctx.objects.items() if isinstance(o, FaultQueue)]
            fq = fqs[0] if fqs and _chance(data, 1) else ctx.fault_alloc()
        ioas = self._ioas(ctx)
        if kind == "nested":
            parents = [
                i for i, o in ctx.objects.items() if isinstance(o, HwPagetable) and o.nest_parent
            ]
            if not parents:
                return
            flags = ["pasid"] if compat else []
            hwpt = self._try(ctx.hwpt_alloc, dev, parents[0], flags, fq, {"type": "vtd_s1"})
            if isinstance(hwpt, int):
                ctx.hwpt_s1_map(hwpt, NESTED_IOVA, NPAGES * 4096, BASE, RW)
        else:
            flags = (["nest_parent"] if kind == "parent" else []) + (["pasid"] if compat else [])
            self._try(ctx.hwpt_alloc, dev, ioas, flags, fq, None)

    @rule(data=st.data(), pasid=st.sampled_from(PASIDS), how=st.sampled_from(["attach", "replace"]))
    def attach(self, data: st.DataObject, pasid: int | None, how: str) -> None:
        ctx = self._ctx(data)
        dev = self._dev(ctx, data)
        hwpt = self._obj(ctx, data, HwPagetable)
        op = ctx.attach if how == "attach" else ctx.replace
        self._try(op, dev, hwpt, pasid, self.env.now)

    def _assert_drained(self, rid: str, pasids: list[int | None] | None) -> None:
        """Nothing of (device, PASID) left in flight: not on the link, not in the PRQ,
        not set aside as a partial (issue rule 5). ``pasids=None``: any PASID."""
        env = self.env
        info = env.core.devices[rid]
        unit = info.info.unit

        def ours(sid: int, pp: bool, pasid: int) -> bool:
            return sid == info.sid and (pasids is None or (pasid if pp else None) in pasids)

        link = env.machine._links[unit.name]  # introspection: posted requests
        assert not any(ours(d.sid, d.pasid_present, d.pasid) for _fn, d in link)
        for off in unit.prq.pending_offsets():
            d = unit.prq.read_descriptor(off)
            assert not ours(d.sid, d.pasid_present, d.pasid), "detach returned undrained"
        for faults in info.fault_param.partials.values():
            assert not any(pasids is None or (f[1] if f[0] & 1 else None) in pasids for f in faults)

    @rule(data=st.data())
    def detach(self, data: st.DataObject) -> None:
        ctx = self._ctx(data)
        dev = self._dev(ctx, data)
        pasid = self._pasid(ctx, dev, data)
        info = getattr(ctx.objects.get(dev), "dev", None)
        # With PRI off the function sends no page request: only a device with PRI on
        # (6.18: from probe; 6.12: with a fault-capable attachment) has any in flight.
        attached = info is not None and pasid in info.handles and info.fn.pri.enabled
        self._try(ctx.detach, dev, pasid, self.env.now)
        if attached and info is not None and pasid not in info.handles:
            self._assert_drained(info.name, [pasid])

    @rule(data=st.data())
    def destroy(self, data: st.DataObject) -> None:
        ctx = self._ctx(data)
        ids = sorted(ctx.objects) + [data.draw(st.integers(1, 200))]
        self._try(ctx.destroy, data.draw(st.sampled_from(ids)), self.env.now)

    @rule(
        data=st.data(), page=st.integers(0, NPAGES - 1), n=st.integers(1, 4), nested=st.booleans()
    )
    def dma(self, data: st.DataObject, page: int, n: int, nested: bool) -> None:
        ctx = self._ctx(data)
        dev = self._dev(ctx, data)
        pasid = self._pasid(ctx, dev, data)
        iova = (NESTED_IOVA if nested else BASE) + page * 4096
        n = min(n, NPAGES - page)
        self._try(ctx.dma, dev, pasid, iova, n * 4096, RW, self.env.now, "t")

    @rule(data=st.data(), code=st.sampled_from([0, 0, 1]))
    def respond_right(self, data: st.DataObject, code: int) -> None:
        ctx = self._ctx(data)
        pending = [
            (fq, c, g)
            for fq in ctx.objects.values()
            if isinstance(fq, FaultQueue)
            for c, g in fq.groups.items()
        ]
        if not pending:
            return
        fq, cookie, group = data.draw(st.sampled_from(pending))
        if code == 0:
            ioas = group.attach.hwpt.ioas
            for f in group.faults:
                addr = f[4]
                if addr >= NESTED_IOVA:
                    addr = BASE + (addr - NESTED_IOVA)
                if BASE <= addr < BASE + NPAGES * 4096:
                    self._try(ctx.ioas_map, ioas.id, addr, 4096, RW, self.env.now)
        before = len(self.env.responses)
        assert ctx.page_response(fq.id, [(cookie, code)], self.env.now) == 1
        # The answer reaches the function as one page group response for the group.
        ((_unit, resp),) = self.env.responses[before:]
        last = group.faults[-1]
        assert (resp.sid, resp.prg_index, resp.response_code) == (group.dev.sid, last[2], code)
        assert resp.pasid_present == bool(last[0] & 1)
        assert not resp.pasid_present or resp.pasid == last[1]

    @rule(data=st.data(), cut=st.integers(0, 3))
    def respond_batch(self, data: st.DataObject, cut: int) -> None:
        """The fault fd's write(): entries apply in order up to the first bad one."""
        ctx = self._ctx(data)
        fqs = [o for o in ctx.objects.values() if isinstance(o, FaultQueue) and o.groups]
        if not fqs:
            return
        fq = data.draw(st.sampled_from(fqs))
        cookies = sorted(fq.groups)
        good = [(c, 1) for c in cookies[:cut]]
        bad = data.draw(st.sampled_from([(fq.next_cookie + 3, 0), (cookies[-1], 5)]))
        if bad[0] in dict(good):
            return
        entries = [*good, bad, *((c, 0) for c in cookies[cut:])]
        if not good:
            with pytest.raises(CoreError) as ei:
                ctx.page_response(fq.id, entries, self.env.now)
            assert ei.value.errno == "EINVAL"
            assert sorted(fq.groups) == cookies
            return
        assert ctx.page_response(fq.id, entries, self.env.now) == len(good)
        assert sorted(fq.groups) == cookies[len(good) :]

    @rule(data=st.data(), what=st.sampled_from(["code", "unknown", "late", "foreign"]))
    def respond_wrong(self, data: st.DataObject, what: str) -> None:
        ctx = self._ctx(data)
        fqs = [o for o in ctx.objects.values() if isinstance(o, FaultQueue)]
        if not fqs:
            return
        fq = data.draw(st.sampled_from(fqs))
        before = len(fq.groups)
        if what == "foreign":
            other = next((c for c in self.ctxs if c is not ctx), None)
            if other is not None:
                try:
                    other.page_response(fq.id, [(1, 0)], self.env.now)
                except CoreError as e:
                    assert e.errno == "ENOENT"
                else:
                    raise AssertionError("a foreign fault_id was accepted")
        elif what == "code" and fq.groups:
            cookie = next(iter(fq.groups))
            self._einval(ctx, fq.id, [(cookie, 2)])
        elif what == "unknown":
            self._einval(ctx, fq.id, [(fq.next_cookie + 7, 0)])
        elif what == "late":
            late = [c for (f, c) in self.answered if f == fq.id]
            if late:
                cookie = data.draw(st.sampled_from(sorted(late)))
                self._einval(ctx, fq.id, [(cookie, 0)])
        assert len(fq.groups) == before

    def _einval(self, ctx: Context, fault_id: int, responses: list[tuple[int, int]]) -> None:
        try:
            ctx.page_response(fault_id, responses, self.env.now)
        except CoreError as e:
            assert e.errno == "EINVAL"
        else:
            raise AssertionError("a bad first entry was applied")

    @rule(data=st.data(), page=st.integers(0, NPAGES - 1), n=st.integers(1, NPAGES))
    def unmap(self, data: st.DataObject, page: int, n: int) -> None:
        ctx = self._ctx(data)
        n = min(n, NPAGES - page)
        self._try(ctx.ioas_unmap, self._ioas(ctx), BASE + page * 4096, n * 4096, self.env.now)

    @rule(data=st.data())
    def close_context(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.ctxs) - 1))
        self.env.core.close_context(self.ctxs[i], self.env.now)
        self.ctxs[i] = self.env.core.open_context(f"c{self.env.now}")

    # ---------------------------------------------------------------- admin / hardware
    @rule(
        data=st.data(),
        grpid=st.integers(0, 3),
        last=st.booleans(),
        page=st.integers(0, NPAGES - 1),
        perm=st.sampled_from([1, 2, 3, 3, 3, 9, 5, 0]),
    )
    def inject(self, data: st.DataObject, grpid: int, last: bool, page: int, perm: int) -> None:
        attached = [(d.name, p) for d in self.env.core.devices.values() for p in d.handles]
        if attached and _chance(data, 4):
            rid, pasid = data.draw(st.sampled_from(attached))
        else:
            rid = data.draw(st.sampled_from(RIDS))
            pasid = data.draw(st.sampled_from([*PASIDS, 0]))
        self._try(
            self.env.core.emulation.inject,
            rid,
            pasid,
            BASE + page * 4096,
            perm,
            grpid,
            last,
            self.env.now,
        )

    @rule(data=st.data(), groups=st.integers(1, 5), pages=st.integers(1, 3))
    def inject_groups(self, data: st.DataObject, groups: int, pages: int) -> None:
        """Whole groups for an attached (device, PASID): enough to fill a fault queue."""
        attached = [(d.name, p) for d in self.env.core.devices.values() for p in d.handles]
        if not attached:
            return
        rid, pasid = data.draw(st.sampled_from(attached))
        for g in range(groups):
            for i in range(pages):
                self._try(
                    self.env.core.emulation.inject,
                    rid,
                    pasid,
                    BASE + i * 4096,
                    RW,
                    100 + g,
                    i == pages - 1,
                    self.env.now,
                )

    @rule(rid=st.sampled_from([ACCEL, NIC_PF]), pasid=st.sampled_from(PASIDS))
    def overflow(self, rid: str, pasid: int | None) -> None:
        for i in range(140):
            self._try(
                self.env.core.emulation.inject,
                rid,
                pasid,
                BASE + (i % NPAGES) * 4096,
                RW,
                7,
                False,
                self.env.now,
            )
        self._try(self.env.core.emulation.inject, rid, pasid, BASE, RW, 7, True, self.env.now)

    @rule(rid=st.sampled_from(RIDS), how=st.sampled_from(["plug", "plug", "reset"]))
    def hotplug(self, rid: str, how: str) -> None:
        core = self.env.core
        before = self._pending()
        self._try(core.emulation.plug if how == "plug" else core.emulation.reset, rid, self.env.now)
        if how == "reset":
            # VFIO_DEVICE_RESET leaves the fault queues alone.
            assert before <= self._pending() | self._answered_now()

    @rule(data=st.data())
    def device_reset(self, data: st.DataObject) -> None:
        ctx = self._ctx(data)
        before = self._pending()
        self._try(ctx.device_reset, self._dev(ctx, data), self.env.now)
        assert before <= self._pending() | self._answered_now()

    @rule(
        rid=st.sampled_from(RIDS),
        force=st.sampled_from([False, False, True]),
        grace_ms=st.sampled_from([0, 1, 20, 200]),
    )
    def unplug(self, rid: str, force: bool, grace_ms: int) -> None:
        """vfio-pci's remove path: ask the owners, wait for the release or the grace."""
        core = self.env.core
        self._tags += 1
        was = core.devices[rid].state
        done = self._try(
            core.emulation.unplug,
            rid,
            self.env.now,
            force=force,
            grace_ns=grace_ms * 1_000_000,
            tag=self._tags,
        )
        if done is True:
            assert was != "removed"
            self._assert_drained(rid, None)
        elif done is False:
            assert not force
            self.removals[rid] = self._tags

    def _pending(self) -> set[tuple[int, int]]:
        return {
            (int(str(r["fault_id"])), int(str(r["cookie"])))
            for r in self.env.core.pending(self.env.now)
        }

    def _answered_now(self) -> set[tuple[int, int]]:
        """Groups answered by events not yet taken (a reset answers none itself)."""
        out = set()
        for ev in self.env.core.sink.events:
            if (
                isinstance(ev, Trace)
                and ev.topic in ("response", "auto_response")
                and ev.record.get("cookie") is not None
            ):
                out.add((int(str(ev.record["fault_id"])), int(str(ev.record["cookie"]))))
        return out

    @rule(ns=st.sampled_from([0, 10_000, 1_000_000, 50_000_000]))
    def service(self, ns: int) -> None:
        """Time passes and the interrupt path runs (the daemon's hardware task)."""
        self.env.now += ns
        self.env.core.service(self.env.now)

    @rule()
    def deliver_without_servicing(self) -> None:
        """Posted requests reach the PRQ, but the PRQ thread has not run yet."""
        self.env.machine.advance(self.env.now)

    # ---------------------------------------------------------------- checks
    @invariant()
    def invariants_hold(self) -> None:
        if not hasattr(self, "env"):
            return
        env = self.env
        for ev in env.core.take_events():
            if isinstance(ev, UnplugDone):
                assert self.removals.pop(ev.rid) == ev.tag, "unplug completed twice"
                assert ev.tag not in self.unplugs_done
                self.unplugs_done.add(int(str(ev.tag)))
                self._assert_drained(ev.rid, None)
                assert env.core.devices[ev.rid].state == "removed"
            elif isinstance(ev, DeviceRequest):
                binding = env.core.devices[ev.rid].binding
                assert binding is not None and binding.ctx is ev.ctx
            elif (
                isinstance(ev, Trace)
                and ev.record.get("reason") == "no_handler"
                and not ev.record.get("last")
            ):
                rid = str(ev.record["rid"])
                self.early_answers[rid] = self.early_answers.get(rid, 0) + 1
            if isinstance(ev, FaultDelivered):
                key = (ev.fault_id, ev.cookie)
                assert key not in self.delivered, "cookie handed out twice"
                self.delivered.add(key)
            elif isinstance(ev, Trace) and ev.topic in ("response", "auto_response"):
                cookie = ev.record.get("cookie")
                if cookie is None:
                    continue  # answered by the driver before it became a group
                key = (int(str(ev.record["fault_id"])), int(str(cookie)))
                assert key in self.delivered, "answer to a group never delivered"
                assert key not in self.answered, "group answered twice"
                self.answered.add(key)
        pending = {
            (int(str(r["fault_id"])), int(str(r["cookie"]))) for r in env.core.pending(env.now)
        }
        assert pending == self.delivered - self.answered
        # A removal still waiting has its grace deadline ahead; every one completes.
        for rid in self.removals:
            assert rid in env.core.emulation.removals
        # Unexpected PRG indices, per function: only the extra answers of requests
        # answered on arrival without a handler can cause them.
        for name, fn in env.machine.functions.items():
            assert fn.counters["unexpected_prgi"] <= self.early_answers.get(name, 0), name
        check_invariants(env)


CoreStateMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_core_state_machine = CoreStateMachine.TestCase
