"""The kernel's fault fd records, byte for byte (``include/uapi/linux/iommufd.h``).

A fault queue handed out with the ``fault_fd`` op carries each group as one packet of
``struct iommu_hwpt_pgfault`` records (40 bytes each, little-endian), and takes
packets of ``struct iommu_hwpt_page_response`` (8 bytes each) back, as the kernel's
fault fd does with ``read()`` and ``write()``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Final

#: struct iommu_hwpt_pgfault: flags, dev_id, pasid, grpid, perm, __reserved, addr,
#: length, cookie.
PGFAULT: Final = struct.Struct("<IIIIIIQII")
#: struct iommu_hwpt_page_response: cookie, code.
PAGE_RESPONSE: Final = struct.Struct("<II")
assert PGFAULT.size == 40 and PAGE_RESPONSE.size == 8

RECORD_FIELDS: Final = ("flags", "dev_id", "pasid", "grpid", "perm", "addr", "length")


def encode_group(records: Iterable[Mapping[str, int]], cookie: int) -> bytes:
    """One group as the kernel's ``read()`` copies it out: every record with the cookie."""
    pack = PGFAULT.pack
    return b"".join(
        pack(
            r["flags"],
            r["dev_id"],
            r["pasid"],
            r["grpid"],
            r["perm"],
            0,
            r["addr"],
            r["length"],
            cookie,
        )
        for r in records
    )


def decode_records(data: bytes) -> list[dict[str, int]]:
    """Records out of a packet (``ValueError`` unless a whole number of them)."""
    if len(data) % PGFAULT.size:
        raise ValueError(f"{len(data)} bytes is not a whole number of 40-byte records")
    out = []
    for flags, dev_id, pasid, grpid, perm, _res, addr, length, cookie in PGFAULT.iter_unpack(data):
        out.append(
            {
                "flags": flags,
                "dev_id": dev_id,
                "pasid": pasid,
                "grpid": grpid,
                "perm": perm,
                "addr": addr,
                "length": length,
                "cookie": cookie,
            }
        )
    return out


def encode_responses(responses: Iterable[tuple[int, int]]) -> bytes:
    return b"".join(
        PAGE_RESPONSE.pack(cookie & 0xFFFF_FFFF, code & 0xFFFF_FFFF) for cookie, code in responses
    )


def decode_responses(data: bytes) -> list[tuple[int, int]]:
    """(cookie, code) pairs (``ValueError`` unless a whole number of 8-byte entries)."""
    if len(data) % PAGE_RESPONSE.size:
        raise ValueError(f"{len(data)} bytes is not a whole number of 8-byte responses")
    return list(PAGE_RESPONSE.iter_unpack(data))


__all__ = [
    "PAGE_RESPONSE",
    "PGFAULT",
    "RECORD_FIELDS",
    "decode_records",
    "decode_responses",
    "encode_group",
    "encode_responses",
]
