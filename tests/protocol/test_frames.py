"""Framing rules of docs/protocol.md, *Transport and framing*."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iopfd.protocol.frames import FrameDecoder, ProtocolViolation, encode_frame


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_encode_frame_is_big_endian_length_then_msgpack_map() -> None:
    frame = encode_frame({"op": "hello", "id": 1})
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert msgpack.unpackb(frame[4:]) == {"op": "hello", "id": 1}


def test_decoder_returns_every_complete_frame_in_order() -> None:
    dec = FrameDecoder()
    data = b"".join(encode_frame({"id": i}) for i in range(5))
    assert dec.feed(data) == [{"id": i} for i in range(5)]
    assert dec.buffered == 0


def test_decoder_holds_a_partial_frame_until_the_rest_arrives() -> None:
    dec = FrameDecoder()
    frame = encode_frame({"op": "x", "id": 7})
    for b in frame[:-1]:
        assert dec.feed(bytes([b])) == []
    assert dec.buffered == len(frame) - 1
    assert dec.feed(frame[-1:]) == [{"op": "x", "id": 7}]


def test_zero_length_is_a_violation() -> None:
    with pytest.raises(ProtocolViolation, match="out of range"):
        FrameDecoder().feed(b"\0\0\0\0")


def test_length_above_max_frame_is_a_violation_before_the_body_arrives() -> None:
    dec = FrameDecoder(max_frame=4096)
    with pytest.raises(ProtocolViolation, match="out of range"):
        dec.feed(struct.pack(">I", 4097))


def test_length_equal_to_max_frame_is_accepted() -> None:
    body = msgpack.packb({"k": "x" * 100})
    dec = FrameDecoder(max_frame=len(body))
    assert dec.feed(raw_frame(body)) == [{"k": "x" * 100}]


@pytest.mark.parametrize(
    "body",
    [msgpack.packb([1, 2]), msgpack.packb(3), msgpack.packb("map"), msgpack.packb(None)],
    ids=["array", "int", "str", "nil"],
)
def test_a_frame_that_is_not_a_map_is_a_violation(body: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="not a map"):
        FrameDecoder().feed(raw_frame(body))


def test_non_string_keys_are_a_violation() -> None:
    with pytest.raises(ProtocolViolation, match="keys"):
        FrameDecoder().feed(raw_frame(msgpack.packb({1: 2})))


def test_trailing_bytes_after_the_map_are_a_violation() -> None:
    with pytest.raises(ProtocolViolation, match="trailing"):
        FrameDecoder().feed(raw_frame(msgpack.packb({"id": 1}) + b"\xc0"))


def test_garbage_body_is_a_violation() -> None:
    with pytest.raises(ProtocolViolation):
        FrameDecoder().feed(raw_frame(b"\xc1\xc1\xc1"))


def test_truncated_msgpack_inside_a_complete_frame_is_a_violation() -> None:
    body = msgpack.packb({"id": 1, "op": "hello"})[:-2]
    with pytest.raises(ProtocolViolation):
        FrameDecoder().feed(raw_frame(body))


def test_frames_before_a_bad_one_are_returned_then_the_violation_is_raised() -> None:
    dec = FrameDecoder()
    data = encode_frame({"id": 1}) + encode_frame({"id": 2}) + b"\0\0\0\0"
    assert dec.feed(data) == [{"id": 1}, {"id": 2}]
    with pytest.raises(ProtocolViolation):
        dec.check()
    with pytest.raises(ProtocolViolation):
        dec.feed(encode_frame({"id": 3}))


@settings(max_examples=60, deadline=None)
@given(
    msgs=st.lists(
        st.dictionaries(
            st.text(max_size=8),
            st.one_of(
                st.integers(-(2**63), 2**64 - 1), st.text(max_size=20), st.booleans(), st.none()
            ),
            max_size=6,
        ),
        min_size=1,
        max_size=8,
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=64), max_size=20),
)
def test_any_split_of_the_stream_decodes_the_same_messages(
    msgs: list[dict[str, object]], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    dec = FrameDecoder()
    out: list[dict[str, object]] = []
    pos = 0
    for c in cuts:
        out += dec.feed(stream[pos : pos + c])
        pos += c
    out += dec.feed(stream[pos:])
    assert out == msgs
    assert dec.buffered == 0


def test_deeply_nested_msgpack_is_a_violation_not_a_crash() -> None:
    body = b"\x81\xa1a" + b"\x91" * 100_000 + b"\x01"
    with pytest.raises(ProtocolViolation):
        FrameDecoder().feed(raw_frame(body))
