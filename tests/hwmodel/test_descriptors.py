"""Descriptors are byte-exact 32-byte little-endian images (vtd-hw.md 2.1, 3.1, 5.1)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodel import (
    ContextCacheInvDescriptor,
    DevTlbInvDescriptor,
    InvDescriptor,
    InvWaitDescriptor,
    IotlbInvDescriptor,
    PageGroupResponseDescriptor,
    PageRequestDescriptor,
    PasidCacheInvDescriptor,
    PasidDevTlbInvDescriptor,
    PasidIotlbInvDescriptor,
    decode_inv_descriptor,
    dev_tlb_decode_range,
    dev_tlb_encode_range,
)


def u(bits: int) -> st.SearchStrategy[int]:
    return st.integers(0, (1 << bits) - 1)


page_addr = st.integers(0, (1 << 52) - 1).map(lambda p: p << 12)
SETTINGS = settings(max_examples=150, deadline=None)


def qwords(b: bytes) -> tuple[int, int, int, int]:
    return struct.unpack("<4Q", b)


page_requests = st.builds(
    PageRequestDescriptor,
    sid=u(16),
    pasid_present=st.booleans(),
    pasid=u(20),
    exe_req=st.booleans(),
    pm_req=st.booleans(),
    rd_req=st.booleans(),
    wr_req=st.booleans(),
    lpig=st.booleans(),
    prg_index=u(9),
    addr=page_addr,
    priv_data_present=st.booleans(),
    priv_data=u(128),
)


@SETTINGS
@given(page_requests)
def test_page_request_round_trips_every_field_over_its_range(d: PageRequestDescriptor) -> None:
    raw = d.encode()
    assert len(raw) == 32
    assert PageRequestDescriptor.decode(raw) == d


@SETTINGS
@given(page_requests)
def test_page_request_fields_sit_at_the_spec_bit_positions(d: PageRequestDescriptor) -> None:
    qw0, qw1, qw2, qw3 = qwords(d.encode())
    assert qw0 & 0xFF == 0x01
    assert (qw0 >> 8) & 1 == d.pasid_present
    assert (qw0 >> 9) & 1 == d.priv_data_present
    assert (qw0 >> 16) & 0xFFFF == d.sid
    assert (qw0 >> 32) & 0xFFFFF == d.pasid
    assert (qw0 >> 52) & 1 == d.exe_req
    assert (qw0 >> 53) & 1 == d.pm_req
    assert qw0 & 0xFFC0_0000_0000_FC00 == 0
    assert qw1 & 1 == d.rd_req and (qw1 >> 1) & 1 == d.wr_req and (qw1 >> 2) & 1 == d.lpig
    assert (qw1 >> 3) & 0x1FF == d.prg_index
    assert qw1 & ~0xFFF == d.addr
    assert qw2 | qw3 << 64 == d.priv_data


def test_page_request_known_image() -> None:
    d = PageRequestDescriptor(
        sid=0x3A00,
        pasid_present=True,
        pasid=5,
        exe_req=False,
        pm_req=False,
        rd_req=True,
        wr_req=True,
        lpig=True,
        prg_index=3,
        addr=0x12345000,
    )
    assert d.encode().hex() == ("0101003a050000001f50341200000000" + "00" * 16)


def test_page_request_decode_rejects_wrong_type_length_and_reserved_bits() -> None:
    good = PageRequestDescriptor(1, True, 1, False, False, True, False, True, 1, 0x1000).encode()
    for bad_type in (0x00, 0x02, 0x81):
        with pytest.raises(ValueError, match="type"):
            PageRequestDescriptor.decode(bytes([bad_type]) + good[1:])
    with pytest.raises(ValueError, match="32 bytes"):
        PageRequestDescriptor.decode(good[:31])
    for bit in (10, 15, 54, 63):
        qw0, qw1, qw2, qw3 = qwords(good)
        raw = struct.pack("<4Q", qw0 | 1 << bit, qw1, qw2, qw3)
        with pytest.raises(ValueError, match="reserved"):
            PageRequestDescriptor.decode(raw)


def test_page_request_encode_rejects_out_of_range_fields() -> None:
    base = {
        "sid": 1,
        "pasid_present": True,
        "pasid": 1,
        "exe_req": False,
        "pm_req": False,
        "rd_req": True,
        "wr_req": False,
        "lpig": True,
        "prg_index": 1,
        "addr": 0x1000,
    }
    for k, v in (
        ("sid", 1 << 16),
        ("pasid", 1 << 20),
        ("prg_index", 512),
        ("addr", 0x1001),
        ("addr", 1 << 64),
    ):
        with pytest.raises(ValueError):
            PageRequestDescriptor(**{**base, k: v}).encode()  # type: ignore[arg-type]


def test_stop_marker_is_lpig_without_read_or_write() -> None:
    sm = PageRequestDescriptor(1, True, 1, False, False, False, False, True, 0, 0)
    assert sm.is_stop_marker
    read_last = PageRequestDescriptor(1, True, 1, False, False, True, False, True, 0, 0)
    not_last = PageRequestDescriptor(1, True, 1, False, False, False, False, False, 0, 0)
    assert not read_last.is_stop_marker
    assert not not_last.is_stop_marker


# --------------------------------------------------------------------------- IQ descriptors

INV_STRATEGIES = {
    ContextCacheInvDescriptor: st.builds(
        ContextCacheInvDescriptor, granularity=u(2), did=u(16), sid=u(16), fm=u(2)
    ),
    IotlbInvDescriptor: st.builds(
        IotlbInvDescriptor,
        granularity=u(2),
        did=u(16),
        addr=page_addr,
        am=u(6),
        ih=st.booleans(),
        dw=st.booleans(),
        dr=st.booleans(),
    ),
    DevTlbInvDescriptor: st.builds(
        DevTlbInvDescriptor, sid=u(16), addr=page_addr, s=st.booleans(), pfsid=u(16), qdep=u(5)
    ),
    InvWaitDescriptor: st.builds(
        InvWaitDescriptor,
        sw=st.booleans(),
        status_data=u(32),
        status_addr=st.integers(0, (1 << 62) - 1).map(lambda a: a << 2),
        if_flag=st.booleans(),
        fn=st.booleans(),
        pd=st.booleans(),
    ),
    PasidIotlbInvDescriptor: st.builds(
        PasidIotlbInvDescriptor,
        granularity=u(2),
        did=u(16),
        pasid=u(20),
        addr=page_addr,
        am=u(6),
        ih=st.booleans(),
    ),
    PasidCacheInvDescriptor: st.builds(
        PasidCacheInvDescriptor, granularity=u(2), did=u(16), pasid=u(20)
    ),
    PasidDevTlbInvDescriptor: st.builds(
        PasidDevTlbInvDescriptor,
        sid=u(16),
        pasid=u(20),
        addr=page_addr,
        s=st.booleans(),
        g=st.booleans(),
        pfsid=u(16),
        qdep=u(5),
    ),
    PageGroupResponseDescriptor: st.builds(
        PageGroupResponseDescriptor,
        sid=u(16),
        pasid_present=st.booleans(),
        pasid=u(20),
        response_code=u(4),
        prg_index=u(9),
        lpig=st.booleans(),
    ),
}


@pytest.mark.parametrize("cls", list(INV_STRATEGIES), ids=lambda c: c.__name__)
def test_invalidation_descriptor_round_trips_every_field_over_its_range(cls: type) -> None:
    @SETTINGS
    @given(INV_STRATEGIES[cls])
    def check(d: object) -> None:
        raw = d.encode()  # type: ignore[attr-defined]
        assert len(raw) == 32
        assert cls.decode(raw) == d  # type: ignore[attr-defined]
        assert decode_inv_descriptor(raw) == d
        qw0 = qwords(raw)[0]
        assert qw0 & 0xF == cls.TYPE and (qw0 >> 9) & 7 == 0  # type: ignore[attr-defined]

    check()


SAMPLES: dict[type, InvDescriptor] = {
    ContextCacheInvDescriptor: ContextCacheInvDescriptor(3, did=7, sid=0x3A00, fm=1),
    IotlbInvDescriptor: IotlbInvDescriptor(3, did=7, addr=0x5000, am=2, ih=True),
    DevTlbInvDescriptor: DevTlbInvDescriptor(0x3A00, addr=0x5000, s=True, pfsid=0x3A00, qdep=3),
    InvWaitDescriptor: InvWaitDescriptor(sw=True, status_data=9, status_addr=0x100, pd=True),
    PasidIotlbInvDescriptor: PasidIotlbInvDescriptor(3, did=7, pasid=5, addr=0x5000, am=1),
    PasidCacheInvDescriptor: PasidCacheInvDescriptor(1, did=7, pasid=5),
    PasidDevTlbInvDescriptor: PasidDevTlbInvDescriptor(
        0x3A00, 5, addr=0x5000, s=True, pfsid=0x3A00, qdep=4
    ),
    PageGroupResponseDescriptor: PageGroupResponseDescriptor(0x3A00, True, 5, 1, 7),
}


@pytest.mark.parametrize("cls", list(INV_STRATEGIES), ids=lambda c: c.__name__)
def test_invalidation_descriptor_decode_rejects_any_reserved_bit(cls: type) -> None:
    d = SAMPLES[cls]
    words = list(qwords(d.encode()))
    layout = cls._LAYOUT  # type: ignore[attr-defined]
    checked = 0
    for w in range(4):
        for bit in range(64):
            if layout.reserved[w] >> bit & 1:
                bad = list(words)
                bad[w] |= 1 << bit
                with pytest.raises(ValueError):
                    cls.decode(struct.pack("<4Q", *bad))  # type: ignore[attr-defined]
                checked += 1
    assert checked > 64  # qw2/qw3 at least


def test_page_group_response_matches_linux_qi_pgrp_layout() -> None:
    d = PageGroupResponseDescriptor(
        sid=0x3A00, pasid_present=True, pasid=5, response_code=0xF, prg_index=3, lpig=True
    )
    qw0, qw1, qw2, qw3 = qwords(d.encode())
    # QI_PGRP_RESP_TYPE | QI_PGRP_PASID_P | QI_PGRP_RESP_CODE(0xf) | QI_PGRP_DID(rid) | PASID
    assert qw0 == 0x9 | 1 << 4 | 0xF << 12 | 0x3A00 << 16 | 5 << 32
    assert qw1 == 1 << 2 | 3 << 3  # QI_PGRP_LPIG | QI_PGRP_IDX(3)
    assert qw2 == qw3 == 0


def test_page_group_response_qemu_reserved_masks_are_enforced() -> None:
    good = list(qwords(PageGroupResponseDescriptor(1, True, 1, 0, 1).encode()))
    for w, mask in ((0, 0xFFF0_0000_0000_01E0), (1, 0xFFFF_FFFF_FFFF_F003)):
        for bit in range(64):
            if mask >> bit & 1:
                bad = list(good)
                bad[w] |= 1 << bit
                with pytest.raises(ValueError):
                    PageGroupResponseDescriptor.decode(struct.pack("<4Q", *bad))


def test_decode_dispatch_rejects_unknown_types_and_the_wrong_class() -> None:
    for t in (0x0, 0x4, 0xA, 0xF):
        with pytest.raises(ValueError, match="unsupported"):
            decode_inv_descriptor(bytes([t]) + bytes(31))
    raw = IotlbInvDescriptor(granularity=2, did=3).encode()
    with pytest.raises(ValueError, match="type"):
        PasidIotlbInvDescriptor.decode(raw)
    with pytest.raises(ValueError, match="type"):
        decode_inv_descriptor(raw[:0] + bytes([0x02, 0x02]) + raw[2:])  # type[6:4] = 1


def test_wait_descriptor_bit_positions() -> None:
    d = InvWaitDescriptor(
        sw=True, status_data=0xDEAD, status_addr=0x1234_5678, if_flag=True, fn=True, pd=True
    )
    qw0, qw1, _, _ = qwords(d.encode())
    assert qw0 == 0x5 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 7 | 0xDEAD << 32
    assert qw1 == 0x1234_5678


@given(st.integers(0, (1 << 40) - 1), st.integers(0, 52))
@SETTINGS
def test_dev_tlb_size_encoding_round_trips(page: int, mask: int) -> None:
    start = (page << 12) & ~((1 << (12 + mask)) - 1)
    addr, s = dev_tlb_encode_range(start, mask)
    got_start, size = dev_tlb_decode_range(addr, s)
    assert (got_start, size) == (start if mask < 52 else 0, 1 << (12 + mask))


def test_dev_tlb_whole_range_is_linux_mask_52() -> None:
    addr, s = dev_tlb_encode_range(0, 52)
    assert s and addr == 0x7FFF_FFFF_FFFF_F000
    assert dev_tlb_decode_range(0xFFFF_FFFF_FFFF_F000, True) == (0, 1 << 64)
    assert dev_tlb_decode_range(0x5000, False) == (0x5000, 0x1000)
    assert dev_tlb_decode_range(0x4000, True) == (0x4000, 0x2000)  # bit 12 clear: 8 KiB
    assert dev_tlb_decode_range(0x5000, True) == (0x4000, 0x4000)  # bits 12 set, 13 clear
