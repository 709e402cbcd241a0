"""Bounded property tests: the PRQ ring against a reference model, and the PRI credit
accounting under random traffic, responses, resets and removals."""

from __future__ import annotations

from collections import deque
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodel import (
    PRS_PPR,
    PRS_PRO,
    RESP_INVALID,
    RESP_SUCCESS,
    Machine,
    PageRequestDescriptor,
    Perm,
    TopologySpec,
    default_topology,
)
from hwmodel.testing import NIC_PF, NIC_VF0, NIC_VF1, bind, response_for

SID = 0x3A00


def small() -> Machine:
    t = default_topology()
    return Machine(TopologySpec(tuple(replace(u, prq_order=0) for u in t.iommus), t.functions))


ops = st.lists(
    st.one_of(
        st.tuples(st.just("recv"), st.integers(1, 60), st.booleans()),
        st.tuples(st.just("read"), st.integers(0, 130), st.just(False)),
        st.tuples(
            st.just("w1c"), st.sampled_from([PRS_PPR, PRS_PRO, PRS_PPR | PRS_PRO]), st.just(False)
        ),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_prq_ring_matches_a_reference_queue_with_n_minus_1_slots(
    script: list[tuple[str, int, bool]],
) -> None:
    m = small()
    b = bind(m, "0000:3a:00.0")
    unit, prq = b.unit, b.unit.prq
    ref: deque[PageRequestDescriptor] = deque()
    prs = 0
    autos = 0
    serial = 0
    for op, n, lpig in script:
        if op == "recv":
            for _ in range(n):
                d = PageRequestDescriptor(
                    SID,
                    True,
                    5,
                    False,
                    False,
                    True,
                    False,
                    lpig,
                    serial % 512,
                    (serial % 4096) << 12,
                )
                serial += 1
                before = prs
                if prs & PRS_PRO:
                    autos += lpig
                elif len(ref) == 127:
                    prs |= PRS_PRO
                    autos += lpig
                else:
                    ref.append(d)
                    prs |= PRS_PPR
                unit.receive_page_request(d)
                assert unit.read_prs() == prs, (before, prs)
        elif op == "read":
            offs = prq.pending_offsets()[:n]
            got = [prq.read_descriptor(o) for o in offs]
            want = [ref.popleft() for _ in range(len(offs))]
            assert got == want
            if offs:
                prq.head = (offs[-1] + 32) % prq.size_bytes
        else:
            unit.write_prs_w1c(n)
            prs &= ~n
        assert prq.used == len(ref) <= prq.capacity == 127
        assert len(unit.auto_responses) == min(autos, 256)
        assert all(r.response_code == RESP_SUCCESS for r in unit.auto_responses)


traffic = st.lists(
    st.one_of(
        st.tuples(
            st.just("dma"),
            st.sampled_from([NIC_PF, NIC_VF0, NIC_VF1]),
            st.integers(0, 15),
            st.integers(1, 6),
        ),
        st.tuples(
            st.just("answer"),
            st.sampled_from([RESP_SUCCESS, RESP_INVALID, 0xF]),
            st.integers(0, 20),
            st.just(0),
        ),
        st.tuples(st.just("map"), st.just(""), st.integers(0, 15), st.integers(1, 4)),
        st.tuples(st.just("advance"), st.just(""), st.integers(0, 100_000), st.just(0)),
        st.tuples(st.just("reset"), st.just(""), st.just(0), st.just(0)),
        st.tuples(st.just("remove"), st.sampled_from([NIC_VF0, NIC_VF1]), st.just(0), st.just(0)),
    ),
    max_size=50,
)


@settings(max_examples=60, deadline=None)
@given(traffic)
def test_pri_credits_always_equal_the_pages_of_outstanding_groups(
    script: list[tuple[str, str | int, int, int]],
) -> None:
    m = Machine(default_topology(), max_retries=3, retry_backoff_ns=1000)
    binds = {r: bind(m, r, pasid=3, did=3, reqs=8) for r in (NIC_PF, NIC_VF0, NIC_VF1)}
    pf = binds[NIC_PF]
    pri = pf.fn.pri
    now = 0
    started = []
    seen: list[PageRequestDescriptor] = []
    for op, rid, a, c in script:
        now += 10
        if op == "dma":
            fn = m.function(str(rid))
            if fn.present:
                started.append(m.start_dma(fn.rid, 3, a << 12, c << 12, Perm.READ, now))
        elif op == "answer":
            seen += pf.drain_prq()
            lasts = [r for r in seen if r.lpig]
            if lasts:
                r = lasts[a % len(lasts)]
                seen.remove(r)
                pf.unit.iq.submit([response_for(r, int(rid))])
        elif op == "map":
            for bd in binds.values():
                bd.s2.map(a << 12, 0x100000 + (a << 12), c << 12, Perm.READ)
        elif op == "advance":
            now += a
            m.advance(now)
        elif op == "reset":
            pri.disable()
            pri.do_reset()
            pri.enable(8)
        elif op == "remove":
            vf = m.function(str(rid))
            m.hot_remove(vf.rid, now)
            m.hot_plug(vf.rid, now + 1)
            bind(m, str(rid), pasid=3, did=3)
        fam = [pf.fn, *pf.fn.vfs]
        held = sum(g.npages for f in fam for g in f._groups.values())
        assert pri.outstanding == held <= pri.allocation
        assert pri.stopped == ((not pri.enabled or pri.response_failure) and held == 0)
        for t in started:
            assert (t.status is None) != (t.waiting == "")
