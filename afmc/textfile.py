"""Reading a small text file the user names, without trusting it.

IR files and target files come from downloads and CI checkouts: a FIFO would block ``open``, a
device such as ``/dev/zero`` never ends, and a huge file would exhaust memory before any check.
Both readers go through here so they refuse the same things the same way.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from .errors import AfmcError


def read_text_file(
    path: str | os.PathLike[str], *, what: str, limit: int, too_large: str, error: type[AfmcError]
) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes.

    ``what`` names the file in messages ("IR file"), ``too_large`` is the message when the file
    is over the limit; every failure is one ``error`` naming the file.
    """
    source = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb", buffering=0) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise error(f"cannot read {what}: not a regular file", file=source)
            # a file that says it is too large is refused unread; one that grows is cut at limit + 1
            data = b"" if info.st_size > limit else _read_at_most(handle, limit + 1)
    except (OSError, ValueError) as exc:  # ValueError: a NUL character in the path
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise error(f"cannot read {what}: {why}", file=source) from None
    if max(info.st_size, len(data)) > limit:
        raise error(too_large, file=source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"cannot read {what}: not UTF-8 text ({exc.reason} at byte {exc.start})", file=source) from None


def _read_at_most(handle: BinaryIO, count: int, chunk: int = 1 << 24) -> bytes:
    """Up to ``count`` bytes, read in chunks: ``read(count)`` would reserve ``count`` bytes at once
    (4 GiB for the default IR limit), which a process capped at 2 GiB cannot, however small the file."""
    parts: list[bytes] = []
    total = 0
    while total < count:
        part = handle.read(min(chunk, count - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)
