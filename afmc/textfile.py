"""Reading a small text file the user names, without trusting it.

IR files and target files come from downloads and CI checkouts: a FIFO would block ``open``, a
device such as ``/dev/zero`` never ends, and a huge file would exhaust memory before any check.
Both readers go through here so they refuse the same things the same way.
"""

from __future__ import annotations

import os
import stat

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
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise error(f"cannot read {what}: not a regular file", file=source)
            data = handle.read(limit + 1)
    except (OSError, ValueError) as exc:  # ValueError: a NUL character in the path
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise error(f"cannot read {what}: {why}", file=source) from None
    if len(data) > limit:
        raise error(too_large, file=source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"cannot read {what}: not UTF-8 text ({exc.reason} at byte {exc.start})", file=source) from None
