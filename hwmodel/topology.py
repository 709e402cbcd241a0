"""Topology: IOMMU units and the PCI functions behind them.

A topology is plain frozen data. ``default_topology()`` is what the daemon uses with
no configuration; ``load_topology()`` reads the TOML format documented in
docs/hwmodel.md (``hwmodel/default_topology.toml`` is the worked example).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass

from hwmodel.rid import Rid

MAX_PASID_BITS = 20
PRI_MAX_CAPACITY = 0xFFFF_FFFF


@dataclass(frozen=True)
class IommuSpec:
    """One VT-d unit (DRHD). ``prq_order``: the PRQ is 2^order 4 KiB pages (PQA.PQS)."""

    name: str
    segment: int = 0
    prq_order: int = 4
    iq_entries: int = 256
    pds: bool = True  # ECAP.PDS: the wait descriptor's PD (page drain) bit is valid
    nest: bool = True  # ECAP.NEST: nested translation
    pasid_bits: int = 20  # ECAP.PSS + 1
    prs: bool = True  # ECAP.PRS: page requests supported

    @property
    def prq_entries(self) -> int:
        return 1 << (self.prq_order + 7)


@dataclass(frozen=True)
class FunctionSpec:
    """One PCI function. ``pf`` is set for a virtual function (it shares the PF's PRI)."""

    rid: Rid
    iommu: str
    ats: bool
    pri: bool
    pri_capacity: int
    pasid_bits: int
    pf: Rid | None = None
    name: str = ""

    @property
    def pasid(self) -> bool:
        return self.pasid_bits > 0


@dataclass(frozen=True)
class TopologySpec:
    iommus: tuple[IommuSpec, ...]
    functions: tuple[FunctionSpec, ...]

    def __post_init__(self) -> None:
        _validate(self)


def _validate(t: TopologySpec) -> None:
    names: dict[str, IommuSpec] = {}
    for u in t.iommus:
        if not u.name or u.name in names:
            raise ValueError(f"IOMMU name {u.name!r} empty or duplicated")
        if not 0 <= u.segment <= 0xFFFF:
            raise ValueError(f"IOMMU {u.name}: segment {u.segment} out of range")
        if not 0 <= u.prq_order <= 7:
            raise ValueError(f"IOMMU {u.name}: prq_order {u.prq_order} not in 0..7 (PQA.PQS)")
        if u.iq_entries < 2 or u.iq_entries & (u.iq_entries - 1):
            raise ValueError(f"IOMMU {u.name}: iq_entries {u.iq_entries} not a power of two >= 2")
        if not 1 <= u.pasid_bits <= MAX_PASID_BITS:
            raise ValueError(f"IOMMU {u.name}: pasid_bits {u.pasid_bits} not in 1..20")
        names[u.name] = u
    funcs: dict[Rid, FunctionSpec] = {}
    for f in t.functions:
        if f.rid in funcs:
            raise ValueError(f"function {f.rid} listed twice")
        funcs[f.rid] = f
    for f in t.functions:
        unit = names.get(f.iommu)
        if unit is None:
            raise ValueError(f"function {f.rid}: unknown IOMMU {f.iommu!r}")
        if f.rid.segment != unit.segment:
            raise ValueError(f"function {f.rid}: segment differs from IOMMU {unit.name}")
        if not 0 <= f.pasid_bits <= MAX_PASID_BITS:
            raise ValueError(f"function {f.rid}: pasid_bits {f.pasid_bits} not in 0..20")
        if not 0 <= f.pri_capacity <= PRI_MAX_CAPACITY:
            raise ValueError(f"function {f.rid}: pri_capacity out of range")
        if f.pri and f.pri_capacity < 1 and f.pf is None:
            raise ValueError(f"function {f.rid}: PRI needs pri_capacity >= 1")
        if f.pf is not None:
            pf = funcs.get(f.pf)
            if pf is None:
                raise ValueError(f"VF {f.rid}: unknown PF {f.pf}")
            if pf.pf is not None:
                raise ValueError(f"VF {f.rid}: its PF {f.pf} is itself a VF")
            if pf.iommu != f.iommu:
                raise ValueError(f"VF {f.rid}: must sit behind its PF's IOMMU {pf.iommu}")
            if f.pri and not pf.pri:
                raise ValueError(f"VF {f.rid}: PRI needs a PF with PRI (VFs share the PF's)")


def _vf(rid: str, pf: FunctionSpec, name: str) -> FunctionSpec:
    # A VF has no PRI capability of its own; pri/pri_capacity mirror the PF's shared one.
    return FunctionSpec(
        Rid.parse(rid),
        pf.iommu,
        ats=pf.ats,
        pri=pf.pri,
        pri_capacity=pf.pri_capacity,
        pasid_bits=pf.pasid_bits,
        pf=pf.rid,
        name=name,
    )


def default_topology() -> TopologySpec:
    """The topology the daemon uses with no configuration (same as default_topology.toml)."""
    p = Rid.parse
    nic = FunctionSpec(
        p("0000:3b:00.0"),
        "dmar0",
        ats=True,
        pri=True,
        pri_capacity=256,
        pasid_bits=20,
        name="sriov-nic-pf",
    )
    return TopologySpec(
        iommus=(IommuSpec("dmar0"), IommuSpec("dmar1")),
        functions=(
            FunctionSpec(
                p("0000:3a:00.0"),
                "dmar0",
                ats=True,
                pri=True,
                pri_capacity=512,
                pasid_bits=20,
                name="accel0",
            ),
            nic,
            _vf("0000:3b:00.1", nic, "sriov-nic-vf0"),
            _vf("0000:3b:00.2", nic, "sriov-nic-vf1"),
            FunctionSpec(
                p("0000:3c:00.0"),
                "dmar0",
                ats=True,
                pri=False,
                pri_capacity=0,
                pasid_bits=20,
                name="ats-no-pri",
            ),
            FunctionSpec(
                p("0000:5a:00.0"),
                "dmar1",
                ats=True,
                pri=True,
                pri_capacity=512,
                pasid_bits=20,
                name="accel1",
            ),
            FunctionSpec(
                p("0000:5b:00.0"),
                "dmar1",
                ats=True,
                pri=True,
                pri_capacity=128,
                pasid_bits=0,
                name="ats-pri-no-pasid",
            ),
            FunctionSpec(
                p("0000:5c:00.0"),
                "dmar1",
                ats=False,
                pri=False,
                pri_capacity=0,
                pasid_bits=0,
                name="legacy-dma",
            ),
        ),
    )


_IOMMU_KEYS = {"name", "segment", "prq_order", "iq_entries", "pds", "nest", "pasid_bits", "prs"}
_FUNC_KEYS = {"rid", "iommu", "ats", "pri", "pri_capacity", "pasid_bits", "pf", "name"}
# Keys a VF inherits from its PF when absent: (key, type, default; None = required).
_FUNC_FIELDS: tuple[tuple[str, type, object], ...] = (
    ("iommu", str, None),
    ("ats", bool, False),
    ("pri", bool, False),
    ("pri_capacity", int, 0),
    ("pasid_bits", int, 0),
)


def _get(d: Mapping[str, object], key: str, kind: type, default: object, where: str) -> object:
    v = d.get(key, default)
    if v is None:
        raise ValueError(f"{where}: missing {key!r}")
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise ValueError(f"{where}: {key!r} must be an integer, got {v!r}")
    if not isinstance(v, kind):
        raise ValueError(f"{where}: {key!r} must be {kind.__name__}, got {v!r}")  # noqa: TRY004
    return v


def _table_list(d: Mapping[str, object], key: str) -> list[Mapping[str, object]]:
    v = d.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, Mapping) for x in v):
        raise ValueError(f"{key!r} must be an array of tables ([[{key}]])")
    return list(v)


def topology_from_dict(d: Mapping[str, object]) -> TopologySpec:
    """Build a topology from the TOML structure (``[[iommu]]`` and ``[[function]]``).

    A VF (``pf = "..."``) inherits ``iommu``, ``ats``, ``pri``, ``pasid_bits`` from its PF
    unless given. Raises ``ValueError`` with the offending entry named.
    """
    unknown = set(d) - {"iommu", "function"}
    if unknown:
        raise ValueError(f"unknown top-level keys {sorted(unknown)}")
    iommus: list[IommuSpec] = []
    for i, u in enumerate(_table_list(d, "iommu")):
        where = f"iommu[{i}]"
        bad = set(u) - _IOMMU_KEYS
        if bad:
            raise ValueError(f"{where}: unknown keys {sorted(bad)}")
        dflt = IommuSpec("x")
        iommus.append(
            IommuSpec(
                name=str(_get(u, "name", str, None, where)),
                segment=int(_get(u, "segment", int, dflt.segment, where)),  # type: ignore[call-overload]
                prq_order=int(_get(u, "prq_order", int, dflt.prq_order, where)),  # type: ignore[call-overload]
                iq_entries=int(_get(u, "iq_entries", int, dflt.iq_entries, where)),  # type: ignore[call-overload]
                pds=bool(_get(u, "pds", bool, dflt.pds, where)),
                nest=bool(_get(u, "nest", bool, dflt.nest, where)),
                pasid_bits=int(_get(u, "pasid_bits", int, dflt.pasid_bits, where)),  # type: ignore[call-overload]
                prs=bool(_get(u, "prs", bool, dflt.prs, where)),
            )
        )
    if not iommus:
        raise ValueError("a topology needs at least one [[iommu]]")
    raw = _table_list(d, "function")
    rids: list[Rid] = []
    by_rid: dict[Rid, Mapping[str, object]] = {}
    for i, f in enumerate(raw):
        where = f"function[{i}]"
        bad = set(f) - _FUNC_KEYS
        if bad:
            raise ValueError(f"{where}: unknown keys {sorted(bad)}")
        rid = Rid.parse(str(_get(f, "rid", str, None, where)))
        rids.append(rid)
        by_rid[rid] = f
    funcs: list[FunctionSpec] = []
    empty: Mapping[str, object] = {}
    for i, (rid, f) in enumerate(zip(rids, raw, strict=True)):
        where = f"function[{i}]"
        pf: Rid | None = None
        parent = empty
        if "pf" in f:
            pf = Rid.parse(str(_get(f, "pf", str, None, where)))
            if pf not in by_rid:
                raise ValueError(f"{where}: unknown PF {pf}")
            parent = by_rid[pf]
        vals: dict[str, object] = {}
        for key, kind, default in _FUNC_FIELDS:
            if key in f:
                vals[key] = _get(f, key, kind, None, where)
            elif key in parent:
                vals[key] = _get(parent, key, kind, None, f"{where} (from its PF)")
            elif default is None:
                raise ValueError(f"{where}: missing {key!r}")
            else:
                vals[key] = default
        funcs.append(
            FunctionSpec(
                rid=rid,
                iommu=str(vals["iommu"]),
                ats=bool(vals["ats"]),
                pri=bool(vals["pri"]),
                pri_capacity=int(vals["pri_capacity"]),  # type: ignore[call-overload]
                pasid_bits=int(vals["pasid_bits"]),  # type: ignore[call-overload]
                pf=pf,
                name=str(_get(f, "name", str, "", where)),
            )
        )
    return TopologySpec(tuple(iommus), tuple(funcs))


def load_topology(path: str | os.PathLike[str]) -> TopologySpec:
    """Read a TOML topology file; ``ValueError`` for bad TOML or a bad topology."""
    with open(path, "rb") as fh:
        try:
            data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{os.fspath(path)}: {e}") from e
    return topology_from_dict(data)


def generated_topology(n_functions: int, n_iommus: int = 2) -> TopologySpec:
    """``n_functions`` ATS+PRI+PASID physical functions spread over ``n_iommus`` units.

    Function i has bus i >> 8 and devfn i & 0xff (so up to 65 536 fit in segment 0) and
    sits behind unit ``dmar{bus % n_iommus}``.
    """
    if not 1 <= n_functions <= 65536:
        raise ValueError("n_functions must be in 1..65536")
    if not 1 <= n_iommus <= 256:
        raise ValueError("n_iommus must be in 1..256")
    iommus = tuple(IommuSpec(f"dmar{i}") for i in range(n_iommus))
    names = [u.name for u in iommus]
    funcs = tuple(
        FunctionSpec(
            Rid(0, i >> 8, (i >> 3) & 0x1F, i & 7),
            names[(i >> 8) % n_iommus],
            ats=True,
            pri=True,
            pri_capacity=64,
            pasid_bits=20,
        )
        for i in range(n_functions)
    )
    return TopologySpec(iommus, funcs)
