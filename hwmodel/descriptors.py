"""Byte-exact VT-d descriptors: 256 bits, four little-endian 64-bit words (qw0..qw3).

Layouts follow the VT-d specification rev 5.10 as restated in vtd-hw.md: the page
request descriptor (2.1), the page group response (3.1) and the invalidation queue
descriptors (5.1). Every class encodes to exactly 32 bytes; ``decode`` rejects a wrong
type, a wrong length or any set reserved bit with ``ValueError`` (hardware reports
such an invalidation descriptor as IQE).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from hwmodel.rid import PAGE_SHIFT

DESC_SIZE = 32

RESP_SUCCESS = 0x0
RESP_INVALID = 0x1
RESP_FAILURE = 0xF

# Granularities (G field) per descriptor type.
CC_G_GLOBAL, CC_G_DOMAIN, CC_G_DEVICE = 1, 2, 3
IOTLB_G_GLOBAL, IOTLB_G_DSI, IOTLB_G_PSI = 1, 2, 3
PIOTLB_G_PASID, PIOTLB_G_PSI = 2, 3
PC_G_DOMAIN, PC_G_PASID, PC_G_GLOBAL = 0, 1, 3

_QWORDS = struct.Struct("<4Q")

# A field is stored in one or more segments (word, low bit, width), least significant
# segment first; ``shift`` drops low bits that the descriptor does not carry (ADDR 63:12).
_Seg = tuple[int, int, int]


@dataclass(frozen=True)
class _Field:
    name: str
    segs: tuple[_Seg, ...]
    shift: int = 0
    is_bool: bool = False

    @property
    def width(self) -> int:
        return sum(w for _, _, w in self.segs)


def _f(name: str, word: int, lo: int, width: int, *, shift: int = 0) -> _Field:
    return _Field(name, ((word, lo, width),), shift, False)


def _b(name: str, word: int, bit: int) -> _Field:
    return _Field(name, ((word, bit, 1),), 0, True)


class _Layout:
    """Encoder/decoder for one descriptor type, built once per class."""

    def __init__(
        self,
        cls_name: str,
        type_value: int,
        type_segs: tuple[_Seg, ...],
        fields: tuple[_Field, ...],
    ) -> None:
        self.cls_name = cls_name
        self.type_value = type_value
        self.type_segs = type_segs
        self.fields = fields
        allowed = [0, 0, 0, 0]
        type_words = [0, 0, 0, 0]
        v = type_value
        for word, lo, width in type_segs:
            allowed[word] |= ((1 << width) - 1) << lo
            type_words[word] |= (v & ((1 << width) - 1)) << lo
            v >>= width
        for fld in fields:
            for word, lo, width in fld.segs:
                allowed[word] |= ((1 << width) - 1) << lo
        self.reserved = tuple(~a & 0xFFFF_FFFF_FFFF_FFFF for a in allowed)
        self.type_words = tuple(type_words)
        self.type_masks = tuple(
            sum(((1 << w) - 1) << lo for ww, lo, w in type_segs if ww == i) for i in range(4)
        )
        # (name, limit, shift, low-bits mask, segments with masks, is_bool), computed once
        self._plan = tuple(
            (
                f.name,
                1 << (f.width + f.shift),
                f.shift,
                (1 << f.shift) - 1,
                tuple((w, lo, (1 << width) - 1, width) for w, lo, width in f.segs),
                f.is_bool,
            )
            for f in fields
        )

    def encode(self, obj: object) -> bytes:
        words = list(self.type_words)
        for name, limit, shift, low, segs, _ in self._plan:
            v = int(getattr(obj, name))
            if not 0 <= v < limit:
                raise ValueError(f"{self.cls_name}.{name}={v:#x} does not fit")
            if v & low:
                raise ValueError(f"{self.cls_name}.{name}={v:#x} is not aligned")
            v >>= shift
            for word, lo, mask, width in segs:
                words[word] |= (v & mask) << lo
                v >>= width
        return _QWORDS.pack(*words)

    def decode_fields(self, b: bytes) -> dict[str, Any]:
        if len(b) != DESC_SIZE:
            raise ValueError(f"{self.cls_name}: descriptor must be 32 bytes, got {len(b)}")
        words = _QWORDS.unpack(b)
        for i in range(4):
            if words[i] & self.type_masks[i] != self.type_words[i]:
                raise ValueError(f"{self.cls_name}: wrong descriptor type {descriptor_type(b):#x}")
        for i in range(4):
            bad = words[i] & self.reserved[i]
            if bad:
                raise ValueError(f"{self.cls_name}: reserved bits {bad:#x} set in qw{i}")
        out: dict[str, Any] = {}
        for name, _, shift, _, segs, is_bool in self._plan:
            v = 0
            pos = 0
            for word, lo, mask, width in segs:
                v |= ((words[word] >> lo) & mask) << pos
                pos += width
            if is_bool:  # not one conditional expression: typed int, mypyc makes True 1
                out[name] = v != 0
            else:
                out[name] = v << shift
        return out


_IQ_TYPE_SEGS: tuple[_Seg, ...] = ((0, 0, 4), (0, 9, 3))  # type[6:0] = qw0[11:9] || qw0[3:0]


def descriptor_type(b: bytes) -> int:
    """The 7-bit invalidation-queue descriptor type of ``b`` (qw0[11:9] || qw0[3:0])."""
    qw0 = int.from_bytes(b[:8], "little")
    return ((qw0 >> 9) & 7) << 4 | (qw0 & 0xF)


class _Descriptor:
    _LAYOUT: ClassVar[_Layout]
    TYPE: ClassVar[int]
    NAME: ClassVar[str]

    def encode(self) -> bytes:
        """The 32-byte little-endian image of this descriptor."""
        return self._LAYOUT.encode(self)

    @classmethod
    def _decode_kwargs(cls, b: bytes) -> dict[str, Any]:
        return cls._LAYOUT.decode_fields(bytes(b))


# --------------------------------------------------------------------------- PRQ


@dataclass(slots=True)
class PageRequestDescriptor(_Descriptor):
    """Page request descriptor (PRQ entry, type 0x01), vtd-hw.md 2.1.

    ``addr`` is the page address (4 KiB aligned). ``priv_data`` is the 128-bit private
    data of older specifications (qw2, qw3); zero on current hardware.

    A value: treat it as immutable. It is not a frozen dataclass only because a frozen
    one costs 3 us to build against 0.4 us, and one is built per page request.
    """

    sid: int
    pasid_present: bool
    pasid: int
    exe_req: bool
    pm_req: bool
    rd_req: bool
    wr_req: bool
    lpig: bool
    prg_index: int
    addr: int
    priv_data_present: bool = False
    priv_data: int = 0

    TYPE: ClassVar[int] = 0x01
    NAME: ClassVar[str] = "page_request"

    @property
    def is_stop_marker(self) -> bool:
        """LPIG with neither read nor write: a Stop Marker, which needs no response."""
        return self.lpig and not self.rd_req and not self.wr_req

    def encode(self) -> bytes:
        # Hand-written: this is the hot path of the page request queue.
        sid, pasid, prgi, addr = self.sid, self.pasid, self.prg_index, self.addr
        if not (0 <= sid <= 0xFFFF and 0 <= pasid < 1 << 20 and 0 <= prgi < 1 << 9):
            raise ValueError(f"PageRequestDescriptor field out of range: {self!r}")
        if not 0 <= addr < 1 << 64 or addr & 0xFFF:
            raise ValueError(f"PageRequestDescriptor.addr={addr:#x} not a page address")
        priv = self.priv_data
        if not 0 <= priv < 1 << 128:
            raise ValueError("PageRequestDescriptor.priv_data does not fit in 128 bits")
        qw0 = (
            0x01
            | self.pasid_present << 8
            | self.priv_data_present << 9
            | sid << 16
            | pasid << 32
            | self.exe_req << 52
            | self.pm_req << 53
        )
        qw1 = self.rd_req | self.wr_req << 1 | self.lpig << 2 | prgi << 3 | addr
        return _QWORDS.pack(qw0, qw1, priv & 0xFFFF_FFFF_FFFF_FFFF, priv >> 64)

    @classmethod
    def decode(cls, b: bytes) -> PageRequestDescriptor:
        if len(b) != DESC_SIZE:
            raise ValueError(f"page request descriptor must be 32 bytes, got {len(b)}")
        qw0, qw1, qw2, qw3 = _QWORDS.unpack(b)
        if qw0 & 0xFF != 0x01:
            raise ValueError(f"not a page request descriptor (type {qw0 & 0xFF:#x})")
        if qw0 & 0xFFC0_0000_0000_FC00:
            raise ValueError(f"page request descriptor: reserved bits set in qw0 ({qw0:#x})")
        return cls(  # positional: the hot path
            (qw0 >> 16) & 0xFFFF,  # sid
            qw0 & 0x100 != 0,  # pasid_present
            (qw0 >> 32) & 0xFFFFF,  # pasid
            qw0 >> 52 & 1 != 0,  # exe_req
            qw0 >> 53 & 1 != 0,  # pm_req
            qw1 & 1 != 0,  # rd_req
            qw1 & 2 != 0,  # wr_req
            qw1 & 4 != 0,  # lpig
            (qw1 >> 3) & 0x1FF,  # prg_index
            qw1 & 0xFFFF_FFFF_FFFF_F000,  # addr
            qw0 & 0x200 != 0,  # priv_data_present
            qw2 | qw3 << 64,  # priv_data
        )


# --------------------------------------------------------------------------- IQ


@dataclass(frozen=True, slots=True)
class ContextCacheInvDescriptor(_Descriptor):
    """Context-cache invalidation (type 0x1): G 5:4, DID 31:16, SID 47:32, FM 49:48."""

    granularity: int
    did: int = 0
    sid: int = 0
    fm: int = 0

    TYPE: ClassVar[int] = 0x1
    NAME: ClassVar[str] = "context_cache"
    _LAYOUT: ClassVar[_Layout] = _Layout(
        "ContextCacheInvDescriptor",
        0x1,
        _IQ_TYPE_SEGS,
        (
            _f("granularity", 0, 4, 2),
            _f("did", 0, 16, 16),
            _f("sid", 0, 32, 16),
            _f("fm", 0, 48, 2),
        ),
    )

    @classmethod
    def decode(cls, b: bytes) -> ContextCacheInvDescriptor:
        return cls(**cls._decode_kwargs(b))


@dataclass(frozen=True, slots=True)
class IotlbInvDescriptor(_Descriptor):
    """IOTLB invalidation (type 0x2), tagged by DID: G 1 global, 2 DSI, 3 PSI (ADDR, AM)."""

    granularity: int
    did: int = 0
    addr: int = 0
    am: int = 0
    ih: bool = False
    dw: bool = False
    dr: bool = False

    TYPE: ClassVar[int] = 0x2
    NAME: ClassVar[str] = "iotlb"
    _LAYOUT: ClassVar[_Layout] = _Layout(
        "IotlbInvDescriptor",
        0x2,
        _IQ_TYPE_SEGS,
        (
            _f("granularity", 0, 4, 2),
            _b("dw", 0, 6),
            _b("dr", 0, 7),
            _f("did", 0, 16, 16),
            _f("am", 1, 0, 6),
            _b("ih", 1, 6),
            _f("addr", 1, 12, 52, shift=PAGE_SHIFT),
        ),
    )

    @classmethod
    def decode(cls, b: bytes) -> IotlbInvDescriptor:
        return cls(**cls._decode_kwargs(b))


@dataclass(frozen=True, slots=True)
class DevTlbInvDescriptor(_Descriptor):
    """Device-TLB invalidation without PASID (type 0x3), addressed by SID.

    ``s`` is the Size bit: with S=1 the lowest clear bit of ADDR[63:12] encodes the
    range (see :func:`dev_tlb_encode_range`).
    """

    sid: int
    addr: int = 0
    s: bool = False
    pfsid: int = 0
    qdep: int = 0

    TYPE: ClassVar[int] = 0x3
    NAME: ClassVar[str] = "dev_tlb"
    _LAYOUT: ClassVar[_Layout] = _Layout(
        "DevTlbInvDescriptor",
        0x3,
        _IQ_TYPE_SEGS,
        (
            _Field("pfsid", ((0, 12, 4), (0, 52, 12))),
            _f("qdep", 0, 16, 5),
            _f("sid", 0, 32, 16),
            _b("s", 1, 0),
            _f("addr", 1, 12, 52, shift=PAGE_SHIFT),
        ),
    )

    @classmethod
    def decode(cls, b: bytes) -> DevTlbInvDescriptor:
        return cls(**cls._decode_kwargs(b))


@dataclass(frozen=True, slots=True)
class InvWaitDescriptor(_Descriptor):
    """Invalidation wait (type 0x5): IF, SW (status write), FN (fence), PD (page drain)."""

    sw: bool = True
    status_data: int = 0
    status_addr: int = 0
    if_flag: bool = False
    fn: bool = False
    pd: bool = False

    TYPE: ClassVar[int] = 0x5
    NAME: ClassVar[str] = "wait"
    _LAYOUT: ClassVar[_Layout] = _Layout(
        "InvWaitDescriptor",
        0x5,
        _IQ_TYPE_SEGS,
        (
            _b("if_flag", 0, 4),
            _b("sw", 0, 5),
            _b("fn", 0, 6),
            _b("pd", 0, 7),
            _f("status_data", 0, 32, 32),
            _f("status_addr", 1, 2, 62, shift=2),
        ),
    )

    def encode(self) -> bytes:
        # Hand-written: every submission ends with a wait.
        data, addr = self.status_data, self.status_addr
        if not (0 <= data < 1 << 32 and 0 <= addr < 1 << 64) or addr & 3:
            raise ValueError(f"InvWaitDescriptor status data/address out of range: {self!r}")
        qw0 = 0x5 | self.if_flag << 4 | self.sw << 5 | self.fn << 6 | self.pd << 7 | data << 32
        return _QWORDS.pack(qw0, addr, 0, 0)

    @classmethod
    def decode(cls, b: bytes) -> InvWaitDescriptor:
        return cls(**cls._decode_kwargs(b))


@dataclass(frozen=True, slots=True)
class PasidIotlbInvDescriptor(_Descriptor):
    """PASID-based IOTLB invalidation (type 0x6), tagged by (DID, PASID): G 2 PASID, 3 PSI."""

    granularity: int
    did: int
    pasid: int
    addr: int = 0
    am: int = 0
    ih: bool = False

    TYPE: ClassVar[int] = 0x6
    NAME: ClassVar[str] = "pasid_iotlb"
    _LAYOUT: ClassVar[_Layout] = _Layout(
        "PasidIotlbInvDescriptor",
        0x6,
        _IQ_TYPE_SEGS,
        (
            _f("granularity", 0, 4, 2),
            _f("did", 0, 16, 16),
            _f("pasid", 0, 32, 20),
            _f("am", 1, 0, 6),
            _b("ih", 1, 6),
            _f("addr", 1, 12, 52, shift=PAGE_SHIFT),
        ),
    )

    @classmethod
    def decode(cls, b: bytes) -> PasidIotlbInvDescriptor:
        return cls(**cls._decode_kwargs(b))


@dataclass(frozen=True, slots=True)
class PasidCacheInvDescriptor(_Descriptor):
    """PASID-cache invalidation (type 0x7): G 0 domain, 1 PASID-within-domain, 3 global."""

    granularity: int
    did: int = 0
    pasid: int = 0

    TYPE: ClassVar[int] = 0x7
    NAME: ClassVar[str] = "pasid_cache"
    _LAYOUT: ClassVar[_Layout] = _Layout(
        "PasidCacheInvDescriptor",
        0x7,
        _IQ_TYPE_SEGS,
        (_f("granularity", 0, 4, 2), _f("did", 0, 16, 16), _f("pasid", 0, 32, 20)),
    )

    @classmethod
    def decode(cls, b: bytes) -> PasidCacheInvDescriptor:
        return cls(**cls._decode_kwargs(b))


@dataclass(frozen=True, slots=True)
class PasidDevTlbInvDescriptor(_Descriptor):
    """PASID-based device-TLB invalidation (type 0x8), addressed by (SID, PASID).

    ``s`` (qw1 bit 11) has the same size encoding as :class:`DevTlbInvDescriptor`;
    ``g`` (qw1 bit 0) invalidates global translations of every PASID.
    """

    sid: int
    pasid: int
    addr: int = 0
    s: bool = False
    g: bool = False
    pfsid: int = 0
    qdep: int = 0

    TYPE: ClassVar[int] = 0x8
    NAME: ClassVar[str] = "pasid_dev_tlb"
    _LAYOUT: ClassVar[_Layout] = _Layout(
        "PasidDevTlbInvDescriptor",
        0x8,
        _IQ_TYPE_SEGS,
        (
            _f("qdep", 0, 4, 5),
            _Field("pfsid", ((0, 12, 4), (0, 52, 12))),
            _f("sid", 0, 16, 16),
            _f("pasid", 0, 32, 20),
            _b("g", 1, 0),
            _b("s", 1, 11),
            _f("addr", 1, 12, 52, shift=PAGE_SHIFT),
        ),
    )

    @classmethod
    def decode(cls, b: bytes) -> PasidDevTlbInvDescriptor:
        return cls(**cls._decode_kwargs(b))


@dataclass(frozen=True, slots=True)
class PageGroupResponseDescriptor(_Descriptor):
    """Page group response (IQ type 0x9), vtd-hw.md 3.1. LPIG is ignored by hardware."""

    sid: int
    pasid_present: bool
    pasid: int
    response_code: int
    prg_index: int
    lpig: bool = True

    TYPE: ClassVar[int] = 0x9
    NAME: ClassVar[str] = "page_group_response"
    _LAYOUT: ClassVar[_Layout] = _Layout(
        "PageGroupResponseDescriptor",
        0x9,
        _IQ_TYPE_SEGS,
        (
            _b("pasid_present", 0, 4),
            _f("response_code", 0, 12, 4),
            _f("sid", 0, 16, 16),
            _f("pasid", 0, 32, 20),
            _b("lpig", 1, 2),
            _f("prg_index", 1, 3, 9),
        ),
    )

    def encode(self) -> bytes:
        # Hand-written: one of these goes out for every group answered.
        return encode_page_group_response(
            self.sid, self.pasid_present, self.pasid, self.response_code, self.prg_index, self.lpig
        )

    @classmethod
    def decode(cls, b: bytes) -> PageGroupResponseDescriptor:
        return cls(**cls._decode_kwargs(b))


def encode_page_group_response(  # noqa: PLR0917 - the descriptor's fields
    sid: int,
    pasid_present: bool,
    pasid: int,
    response_code: int,
    prg_index: int,
    lpig: bool = True,
) -> bytes:
    """The 32-byte image of a page group response (vtd-hw.md 3.1), without building a
    descriptor object; the same bits :class:`PageGroupResponseDescriptor` encodes."""
    if not (
        0 <= sid <= 0xFFFF
        and 0 <= pasid < 1 << 20
        and 0 <= response_code <= 0xF
        and 0 <= prg_index < 1 << 9
    ):
        raise ValueError(
            f"page group response field out of range: sid={sid:#x} "
            f"pasid={pasid:#x} rc={response_code:#x} prgi={prg_index:#x}"
        )
    qw0 = 0x9 | pasid_present << 4 | response_code << 12 | sid << 16 | pasid << 32
    return _QWORDS.pack(qw0, lpig << 2 | prg_index << 3, 0, 0)


InvDescriptor = (
    ContextCacheInvDescriptor
    | IotlbInvDescriptor
    | DevTlbInvDescriptor
    | InvWaitDescriptor
    | PasidIotlbInvDescriptor
    | PasidCacheInvDescriptor
    | PasidDevTlbInvDescriptor
    | PageGroupResponseDescriptor
)

INV_DESCRIPTOR_TYPES: dict[int, type[InvDescriptor]] = {
    c.TYPE: c
    for c in (
        ContextCacheInvDescriptor,
        IotlbInvDescriptor,
        DevTlbInvDescriptor,
        InvWaitDescriptor,
        PasidIotlbInvDescriptor,
        PasidCacheInvDescriptor,
        PasidDevTlbInvDescriptor,
        PageGroupResponseDescriptor,
    )
}


def decode_inv_descriptor(b: bytes) -> InvDescriptor:
    """Decode any invalidation-queue descriptor; ``ValueError`` for an unknown type."""
    if len(b) != DESC_SIZE:
        raise ValueError(f"invalidation descriptor must be 32 bytes, got {len(b)}")
    t = descriptor_type(b)
    cls = INV_DESCRIPTOR_TYPES.get(t)
    if cls is None:
        raise ValueError(f"unsupported invalidation descriptor type {t:#x}")
    return cls.decode(b)


def dev_tlb_encode_range(addr: int, mask: int) -> tuple[int, bool]:
    """ADDR and S for a device-TLB invalidation of 2^mask pages at ``addr``.

    As Linux ``qi_flush_dev_iotlb``: with mask > 0 the bits below the size are set, so
    the lowest clear bit of ADDR[63:12] is bit ``12 + mask - 1``. mask >= 52 means all.
    """
    if mask == 0:
        return addr & ~0xFFF, False
    mask = min(mask, 52)
    addr &= ~((1 << (PAGE_SHIFT + mask)) - 1)
    addr |= (1 << (PAGE_SHIFT + mask - 1)) - 1
    return addr & ~0xFFF & 0xFFFF_FFFF_FFFF_FFFF, True


def dev_tlb_decode_range(addr: int, s: bool) -> tuple[int, int]:
    """(start, size in bytes) covered by a device-TLB invalidation's ADDR and S bit."""
    if not s:
        return addr & ~0xFFF, 1 << PAGE_SHIFT
    k = PAGE_SHIFT
    while k < 64 and addr >> k & 1:
        k += 1
    if k >= 63:
        return 0, 1 << 64
    size = 1 << (k + 1)
    return addr & ~(size - 1), size
