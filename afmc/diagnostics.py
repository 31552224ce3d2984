"""Render errors for the command line: one ``afmc: error:`` line, then any context lines.

Tracebacks are shown only for internal errors and only when ``AFMC_DEBUG=1``.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import TextIO

from .errors import AfmcError

log = logging.getLogger("afmc")


def render_error(exc: AfmcError) -> str:
    """The first line of the message carries the location; a caret diagram may follow."""
    if "\n" in exc.message:
        head, *rest = exc.message.split("\n")
        located = type(exc)(head, file=exc.file, node=exc.node, key=exc.key).render()
        return "\n".join([f"afmc: error: {located}", *rest])
    return f"afmc: error: {exc.render()}"


def report_error(exc: BaseException, stream: TextIO | None = None) -> int:
    """Print ``exc`` for a user and return the exit code it maps to."""
    stream = stream or sys.stderr
    if isinstance(exc, AfmcError):
        print(render_error(exc), file=stream)
        return exc.exit_code
    if isinstance(exc, MemoryError):
        print("afmc: error: out of memory", file=stream)
        return 1
    print(f"afmc: error: internal error: {type(exc).__name__}: {exc}".replace("\n", " "), file=stream)
    if os.environ.get("AFMC_DEBUG"):
        traceback.print_exception(exc, file=stream)
    return 1


def configure_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="afmc: %(levelname)s: %(message)s", stream=sys.stderr)
