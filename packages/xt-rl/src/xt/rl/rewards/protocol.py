"""The frames reward workers and `xt.rl.rewards.pool` exchange over a worker's stdin/stdout:
an 8-byte little-endian length, then a pickle of the message (`xt.rl.rewards._worker` lists them)."""
from __future__ import annotations

import pickle
import struct
from typing import Any, BinaryIO

__all__ = ["send_frame", "recv_frame"]

_HEADER = struct.Struct("<Q")


def send_frame(stream: BinaryIO, obj: Any) -> None:
    """Write one length-prefixed pickle frame and flush."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("reward worker stream closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_frame(stream: BinaryIO) -> Any:
    """Read one frame written by `send_frame` (blocking). Raises EOFError when the stream closed."""
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    return pickle.loads(_read_exact(stream, size))
