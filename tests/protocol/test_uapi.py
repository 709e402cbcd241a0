"""The fault fd's records, field by field, as include/uapi/linux/iommufd.h lays them."""

from __future__ import annotations

import struct

import pytest

from iopfd.protocol.uapi import (
    PAGE_RESPONSE,
    PGFAULT,
    decode_records,
    decode_responses,
    encode_group,
    encode_responses,
)


def test_a_record_is_40_bytes_at_the_uapi_offsets() -> None:
    rec = {
        "flags": 7,
        "dev_id": 3,
        "pasid": 0x1234,
        "grpid": 0x1AB,
        "perm": 3,
        "addr": 0xDEAD_B000,
        "length": 0,
    }
    data = encode_group([rec], cookie=9)
    assert len(data) == PGFAULT.size == 40
    assert struct.unpack_from("<I", data, 0) == (7,)  # flags
    assert struct.unpack_from("<I", data, 4) == (3,)  # dev_id
    assert struct.unpack_from("<I", data, 8) == (0x1234,)  # pasid
    assert struct.unpack_from("<I", data, 12) == (0x1AB,)  # grpid
    assert struct.unpack_from("<I", data, 16) == (3,)  # perm
    assert struct.unpack_from("<I", data, 20) == (0,)  # __reserved
    assert struct.unpack_from("<Q", data, 24) == (0xDEAD_B000,)  # addr
    assert struct.unpack_from("<I", data, 32) == (0,)  # length
    assert struct.unpack_from("<I", data, 36) == (9,)  # cookie
    assert decode_records(data) == [{**rec, "cookie": 9}]


def test_a_group_is_its_records_in_order_with_one_cookie() -> None:
    recs = [
        {"flags": 5, "dev_id": 1, "pasid": 2, "grpid": 3, "perm": 1, "addr": a, "length": 0}
        for a in (0x1000, 0x2000)
    ]
    recs[-1]["flags"] = 7
    out = decode_records(encode_group(recs, cookie=4))
    assert [r["addr"] for r in out] == [0x1000, 0x2000]
    assert {r["cookie"] for r in out} == {4}
    with pytest.raises(ValueError):
        decode_records(b"\0" * 41)


def test_responses_are_8_bytes_cookie_then_code() -> None:
    data = encode_responses([(5, 0), (6, 1)])
    assert data == struct.pack("<IIII", 5, 0, 6, 1) and PAGE_RESPONSE.size == 8
    assert decode_responses(data) == [(5, 0), (6, 1)]
    with pytest.raises(ValueError):
        decode_responses(b"\0" * 12)
