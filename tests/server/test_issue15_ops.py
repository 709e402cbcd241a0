"""Over the wire: automatic domains (v2 item 13) and the IOAS ops the preload sends for
IOMMU_IOAS_IOVA_RANGES, _ALLOW_IOVAS, _COPY, _MAP_FILE and IOMMU_OPTION (docs/uapi.md)."""

from __future__ import annotations

from typing import Any

from iopfd_flows import ACCEL0, ACCEL1, IOVA, READ, WRITE
from iopfd_harness import DaemonProc


def _objects(c: Any) -> dict[int, dict[str, Any]]:
    return {o["id"]: o for o in c.call("objects")["objects"]}


def test_attach_of_an_ioas_reports_its_automatic_domain(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        ioas = c.call("ioas_alloc")["ioas_id"]
        dev = c.call("bind", rid=ACCEL0)["dev_id"]
        dev1 = c.call("bind", rid=ACCEL1)["dev_id"]
        hwpt = c.call("attach", dev_id=dev, pt_id=ioas)["hwpt_id"]
        assert hwpt != ioas
        row = _objects(c)[hwpt]
        assert (row["type"], row["auto_domain"], row["ioas_id"]) == ("hwpt_paging", True, ioas)
        assert c.call("attach", dev_id=dev1, pt_id=ioas) == {"hwpt_id": hwpt}
        assert c.error("destroy", obj_id=hwpt) == "EBUSY"
        assert (
            c.error("attach", dev_id=dev, pt_id=ioas, pasid=5) == "EINVAL"
        )  # not pasid-compatible
        user = c.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=[])["hwpt_id"]
        assert c.call("replace", dev_id=dev, pt_id=user) == {"hwpt_id": user}
        assert c.call("replace", dev_id=dev1, pt_id=user) == {"hwpt_id": user}
        assert hwpt not in _objects(c)  # its last attachment went
        assert c.call("replace", dev_id=dev, pt_id=ioas)["hwpt_id"] not in (hwpt, user)
        c.call("unbind", dev_id=dev)
        assert [o["id"] for o in _objects(c).values() if o.get("auto_domain")] == []


def test_iova_ranges_allow_iovas_copy_and_map_file(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        src = c.call("ioas_alloc")["ioas_id"]
        dst = c.call("ioas_alloc")["ioas_id"]
        assert c.call("ioas_iova_ranges", ioas_id=src) == {
            "ranges": [
                {"start": 0, "last": 0xFEDF_FFFF},
                {"start": 0xFEF0_0000, "last": (1 << 48) - 1},
            ],
            "iova_alignment": 4096,
        }
        assert c.error("ioas_iova_ranges", ioas_id=9999) == "ENOENT"
        ranges = [{"start": 0x4000_0000, "last": 0x4FFF_FFFF}]
        assert c.call("ioas_allow_iovas", ioas_id=dst, ranges=ranges) == {}
        bad = [{"start": 0xFE00_0000, "last": 0xFEE0_FFFF}]
        assert c.error("ioas_allow_iovas", ioas_id=dst, ranges=bad) == "EBUSY"
        assert (
            c.error("ioas_allow_iovas", ioas_id=dst, ranges=[{"start": 5, "last": 5}]) == "EINVAL"
        )
        c.call("ioas_map", ioas_id=src, iova=IOVA, length=0x2000, perm=READ | WRITE)
        copy = {"src_ioas_id": src, "src_iova": IOVA, "dst_ioas_id": dst, "length": 0x1000}
        assert c.call("ioas_copy", **copy, dst_iova=0x30_0000, perm=READ) == {"iova": 0x30_0000}
        assert c.error("ioas_copy", **copy, dst_iova=0x30_0000, perm=READ) == "EBUSY"
        assert c.call("ioas_copy", **copy, perm=READ) == {"iova": 0x4000_0000}  # allowed
        gap = dict(copy, src_iova=IOVA + 0x1000, length=0x2000)
        assert c.error("ioas_copy", **gap, perm=READ) == "ENOENT"
        got = c.call("ioas_map_file", ioas_id=src, start=0x10_0000, length=0x4000, perm=READ)
        assert got["iova"] % 0x4000 == 0
        assert (
            c.error(
                "ioas_map_file", ioas_id=src, iova=0xFEE0_0000, start=0, length=0x1000, perm=READ
            )
            == "EINVAL"
        )
        files = _objects(c)[src]["map_files"]
        assert files == [{"iova": got["iova"], "length": 0x4000, "start": 0x10_0000}]


def test_option_rlimit_mode_and_huge_pages(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:  # the harness's clients are admins: CAP_SYS_RESOURCE
        assert c.call("option", option="rlimit_mode", action="get") == {"val64": 0}
        assert c.error("option", option="rlimit_mode", action="set", val64=2) == "EINVAL"
        assert c.call("option", option="rlimit_mode", action="set", val64=1) == {}
        assert c.call("option", option="rlimit_mode", action="get") == {"val64": 1}
        ioas = c.call("ioas_alloc")["ioas_id"]
        assert c.error("option", option="rlimit_mode", action="set", val64=0) == "EBUSY"
        huge = {"option": "huge_pages", "object_id": ioas}
        assert c.call("option", **huge, action="get") == {"val64": 1}
        assert c.call("option", **huge, action="set", val64=0) == {}
        assert c.call("option", **huge, action="get") == {"val64": 0}
        assert c.error("option", option="huge_pages", action="get", object_id=9999) == "ENOENT"
        assert c.error("option", option="dirty", action="get") == "EOPNOTSUPP"
