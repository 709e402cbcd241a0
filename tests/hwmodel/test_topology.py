"""Requester IDs, page tables and topologies (default, TOML, generated)."""

from __future__ import annotations

from pathlib import Path

import pytest

import hwmodel
from hwmodel import (
    Machine,
    PageTable,
    Perm,
    Rid,
    default_topology,
    generated_topology,
    load_topology,
    topology_from_dict,
)

TOML = Path(hwmodel.__file__).parent / "default_topology.toml"


def test_rid_parse_format_and_sid() -> None:
    r = Rid.parse("0000:3A:01.2")
    assert (r.segment, r.bus, r.dev, r.fn) == (0, 0x3A, 1, 2)
    assert str(r) == "0000:3a:01.2" and r.sid == 0x3A0A
    assert Rid.from_sid(0, 0x3A0A) == r


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "3a:0.0",  # the short form (segment 0) is 3a:00.0: tests/protocol/test_rid.py
        ":3a:00.0",
        "0000:3a:00.8",
        "0000:3a:20.0",
        "0000:3a:00",
        "00000:3a:00.0",
        "0000:3g:00.0",
        " 0000:3a:00.0",
    ],
)
def test_rid_parse_rejects_malformed_strings(bad: str) -> None:
    with pytest.raises(ValueError):
        Rid.parse(bad)


def test_page_table_map_lookup_unmap() -> None:
    pt = PageTable()
    pt.map(0x10000, 0x80000, 0x3000, Perm.READ | Perm.WRITE)
    assert pt.lookup(0x11234) == (0x81234, Perm.READ | Perm.WRITE)
    assert pt.lookup(0x13000) is None
    assert pt.unmap(0x0, 0x12000) == 0x2000
    assert pt.lookup(0x10000) is None and len(pt) == 1
    with pytest.raises(ValueError):
        pt.map(0x10001, 0, 0x1000, Perm.READ)
    with pytest.raises(ValueError):
        pt.map(0x10000, 0, 0x800, Perm.READ)


def test_default_topology_has_what_the_issue_requires() -> None:
    t = default_topology()
    assert [u.name for u in t.iommus] == ["dmar0", "dmar1"]
    f = {str(x.rid): x for x in t.functions}
    full = [x for x in t.functions if x.ats and x.pri and x.pasid and x.pf is None]
    assert len({x.iommu for x in full}) == 2  # on different IOMMUs
    assert f["0000:3a:00.0"].pri_capacity == 512 and f["0000:3a:00.0"].pasid_bits == 20
    vfs = [x for x in t.functions if x.pf == Rid.parse("0000:3b:00.0")]
    assert [str(v.rid) for v in vfs] == ["0000:3b:00.1", "0000:3b:00.2"]
    assert all(v.pri and v.ats and v.pasid for v in vfs)
    assert not f["0000:3c:00.0"].pri and f["0000:3c:00.0"].ats
    assert f["0000:5b:00.0"].ats and f["0000:5b:00.0"].pri and not f["0000:5b:00.0"].pasid
    assert not (f["0000:5c:00.0"].ats or f["0000:5c:00.0"].pri or f["0000:5c:00.0"].pasid)


def test_the_toml_worked_example_is_the_default_topology() -> None:
    assert load_topology(TOML) == default_topology()


@pytest.mark.parametrize(
    ("doc", "msg"),
    [
        ({"iommu": []}, "at least one"),
        ({"iommu": [{"name": "a"}], "extra": 1}, "unknown top-level"),
        ({"iommu": [{"name": "a", "colour": 1}]}, "unknown keys"),
        ({"iommu": [{"name": "a", "prq_order": 9}]}, "prq_order"),
        ({"iommu": [{"name": "a", "iq_entries": 100}]}, "iq_entries"),
        ({"iommu": [{"name": "a"}, {"name": "a"}]}, "duplicated"),
        ({"iommu": [{"name": "a", "segment": "0"}]}, "integer"),
        (
            {"iommu": [{"name": "a"}], "function": [{"rid": "0000:01:00.0", "iommu": "b"}]},
            "unknown IOMMU",
        ),
        (
            {"iommu": [{"name": "a"}], "function": [{"rid": "0001:01:00.0", "iommu": "a"}]},
            "segment",
        ),
        (
            {
                "iommu": [{"name": "a"}],
                "function": [
                    {"rid": "0000:01:00.0", "iommu": "a"},
                    {"rid": "0000:01:00.0", "iommu": "a"},
                ],
            },
            "twice",
        ),
        (
            {"iommu": [{"name": "a"}], "function": [{"rid": "0000:01:00.1", "pf": "0000:01:00.0"}]},
            "unknown PF",
        ),
        (
            {
                "iommu": [{"name": "a"}],
                "function": [{"rid": "0000:01:00.0", "iommu": "a", "pri": True, "pri_capacity": 0}],
            },
            "capacity",
        ),
        (
            {
                "iommu": [{"name": "a"}],
                "function": [
                    {"rid": "0000:01:00.0", "iommu": "a"},
                    {"rid": "0000:01:00.1", "pf": "0000:01:00.0", "pri": True},
                ],
            },
            "PRI needs a PF",
        ),
        ({"iommu": [{"name": "a"}], "function": [{"rid": "bogus", "iommu": "a"}]}, "malformed"),
    ],
)
def test_bad_topologies_are_refused_with_a_clear_message(doc: dict, msg: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=msg):
        topology_from_dict(doc)


def test_load_topology_reports_toml_syntax_errors(tmp_path: Path) -> None:
    p = tmp_path / "t.toml"
    p.write_text("[[iommu]\nname=")
    with pytest.raises(ValueError, match=r"t\.toml"):
        load_topology(p)


def test_generated_topology_scales_to_65536_functions() -> None:
    t = generated_topology(65536, n_iommus=4)
    assert len(t.functions) == 65536 and len({f.rid.sid for f in t.functions}) == 65536
    assert {f.iommu for f in t.functions} == {"dmar0", "dmar1", "dmar2", "dmar3"}
    m = Machine(generated_topology(1024))
    assert len(m.functions) == 1024
    with pytest.raises(ValueError):
        generated_topology(65537)


def test_machine_function_lookup() -> None:
    m = Machine(default_topology())
    assert m.function("0000:3A:00.0") is m.function(Rid.parse("0000:3a:00.0"))
    with pytest.raises(KeyError):
        m.function("0000:99:00.0")
    with pytest.raises(ValueError):
        m.function("nope")
