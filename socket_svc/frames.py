"""Server frames encoded once: the bytes a push shares among every device stream it reaches.

A message pushed to a 500-member group is converted and serialised once, not once per
device: each stream writes the same bytes (the Connect stream's serializer passes bytes
through, see `socket_svc.servicer.add_socket_service`; the WebSocket sends them as they
are). A batch is built by concatenating its frames, which is what protobuf's encoder
writes for a repeated message field, so every frame on the wire is byte for byte what
`ServerFrame.SerializeToString()` gives for the same content (tests/test_frames.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from natter import convert
from natter import domain as d
from natter.v1 import socket_service_pb2 as spb

# A frame on its way out: built as a message, or already encoded.
Frame = spb.ServerFrame | bytes

# Field keys (field number << 3 | wire type 2, length-delimited), one byte each.
_MESSAGE_KEY = bytes(((spb.ServerFrame.MESSAGE_FIELD_NUMBER << 3) | 2,))
_BATCH_KEY = bytes(((spb.ServerFrame.BATCH_FIELD_NUMBER << 3) | 2,))
_FRAMES_KEY = bytes(((spb.ServerBatch.FRAMES_FIELD_NUMBER << 3) | 2,))
_SMALL = [bytes((i,)) for i in range(128)]

# The messages encoded last, by identity (each entry keeps its message alive, so an id is
# not reused while it is here): the sessions a push reaches take its bytes from here.
MEMO = 1024
_memo: dict[int, tuple[d.Message, bytes]] = {}


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int."""
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n > 127:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode(frame: Frame) -> bytes:
    return frame if isinstance(frame, bytes) else frame.SerializeToString()


def _message_frame(m: d.Message) -> bytes:
    body = convert.message(m).SerializeToString()
    return _MESSAGE_KEY + varint(len(body)) + body


def message(m: d.Message) -> bytes:
    """ServerFrame{message: m}, encoded once for each message value pushed to many streams."""
    hit = _memo.get(id(m))
    if hit is not None and hit[0] is m:
        return hit[1]
    data = _message_frame(m)
    if len(_memo) >= MEMO:
        del _memo[next(iter(_memo))]
    _memo[id(m)] = (m, data)
    return data


def replayed(m: d.Message) -> bytes:
    """ServerFrame{message: m} for one device only (a replay page): not remembered."""
    return _message_frame(m)


def batch(frames: Sequence[Frame]) -> bytes:
    """ServerFrame{batch: ServerBatch{frames}}, from the frames' own encodings."""
    parts: list[bytes] = []
    for f in frames:
        data = encode(f)
        parts += (_FRAMES_KEY, varint(len(data)), data)
    body = b"".join(parts)
    return _BATCH_KEY + varint(len(body)) + body
