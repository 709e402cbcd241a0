"""Set-ups shared by the integration tests, spoken over the raw-frame client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iopfd_rawclient import RawClient

READ, WRITE, EXEC, PRIV = 1, 2, 4, 8
PASID_VALID, LAST_PAGE, NEEDS_PASID = 1, 2, 4

ACCEL0 = "0000:3a:00.0"  # ATS, PRI, 20-bit PASID
NIC_PF = "0000:3b:00.0"  # PF with PRI
NIC_VF0 = "0000:3b:00.1"  # its VF: shares the PF's PRI
ATS_NO_PRI = "0000:3c:00.0"
ACCEL1 = "0000:5a:00.0"  # ATS, PRI, PASID, on dmar1
PRI_NO_PASID = "0000:5b:00.0"
LEGACY = "0000:5c:00.0"  # no ATS, no PRI, no PASID

IOVA = 0x10_0000


@dataclass
class FaultPath:
    dev_id: int
    ioas_id: int
    fault_id: int
    hwpt_id: int


def fault_path(
    c: RawClient, rid: str = ACCEL0, *, pasid: int | None = None, flags: list[str] | None = None
) -> FaultPath:
    """bind, IOAS, fault queue, fault-capable paging HWPT, attached (RID or pasid).

    The HWPT takes flag ``pasid`` when attached at a PASID (kernel 6.18, PROTOCOL.md v2
    item 2) unless ``flags`` says otherwise."""
    dev = c.call("bind", rid=rid)["dev_id"]
    ioas = c.call("ioas_alloc")["ioas_id"]
    fault = c.call("fault_alloc")["fault_id"]
    if flags is None:
        flags = ["pasid"] if pasid is not None else []
    hwpt = c.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=flags, fault_id=fault)["hwpt_id"]
    args: dict[str, Any] = {"dev_id": dev, "pt_id": hwpt}
    if pasid is not None:
        args["pasid"] = pasid
    c.call("attach", **args)
    return FaultPath(dev, ioas, fault, hwpt)


def fault_event(c: RawClient) -> dict[str, Any]:
    ev = c.wait_event("fault")
    assert set(ev) <= {"event", "seq", "fault_id", "cookie", "faults", "throttled"}
    return ev
