"""Reading a tool output saved by hand (`podsys check parse KIND FILE`): bounded in size, and
text, before any parser sees it.

No output podsys judges comes near the limit (a kernel ring buffer is at most a few MiB, a
single-node NCCL_DEBUG=INFO log a few MiB); a bigger file is the wrong file, and reading it whole
would only spend memory."""

from __future__ import annotations

import os
from typing import BinaryIO

MAX_BYTES = 16 << 20
_CHUNK = 1 << 20


def read_saved_output(stream: BinaryIO, size: int | None = None, limit: int = MAX_BYTES) -> str:
    """The text of a saved tool output. ValueError (one line) for one that is too big, binary
    or empty. `size`, when known (a regular file), rejects a big file before reading it."""
    if size is not None and size > limit:
        raise ValueError(f"{_mib(size)} is more than the {_mib(limit)} any tool output podsys judges takes: wrong file?")
    data = bytearray()
    while len(data) <= limit:
        chunk = stream.read(_CHUNK)
        if not chunk:
            break
        data += chunk
    if len(data) > limit:
        raise ValueError(f"more than the {_mib(limit)} any tool output podsys judges takes: wrong file?")
    if b"\0" in data:
        raise ValueError(f"binary data (a NUL byte at offset {data.index(0)}), not a tool's text output")
    text = data.decode("utf-8", errors="replace")
    del data
    bad = text.count("\ufffd")
    if bad > max(8, len(text) // 100):
        raise ValueError(f"binary data ({bad} bytes that are not UTF-8 text), not a tool's text output")
    if not text.strip():
        raise ValueError("empty: no tool output in it")
    return text


def file_size(stream: BinaryIO) -> int | None:
    """The size of a regular file behind the stream; None for a pipe or terminal."""
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    import stat as stat_module

    return stat.st_size if stat_module.S_ISREG(stat.st_mode) else None


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB" if size >= (1 << 20) else f"{size} bytes"
