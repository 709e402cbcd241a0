"""The bench's own plumbing: framing and statistics must be right for the figures to be."""

from __future__ import annotations

import msgpack

from bench.common import FrameReader, encode_frame, encode_frames, percentile


def test_frame_reader_reassembles_frames_split_at_every_byte() -> None:
    objs = [{"id": i, "op": "dma", "pad": "x" * i} for i in range(20)]
    stream = encode_frames(objs)
    reader = FrameReader()
    got = []
    for i in range(len(stream)):
        got += reader.feed(stream[i : i + 1])
    assert got == objs


def test_encode_frame_is_big_endian_length_then_one_msgpack_map() -> None:
    frame = encode_frame({"id": 7})
    body = msgpack.packb({"id": 7})
    assert frame == len(body).to_bytes(4, "big") + body


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([5], 99) == 5
