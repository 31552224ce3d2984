"""Render errors for the command line: one ``afmc: error:`` line, then any context lines; log
records and Python warnings as one ``afmc: <level>:`` line each; and the signal handling that lets
an interrupted command clean up after itself.

Tracebacks are shown only for internal errors and only when ``AFMC_DEBUG=1``.

Signals: ``afmc`` turns SIGTERM into the ``Terminated`` exception (SIGINT already raises
``KeyboardInterrupt``), so that every ``finally`` and ``except BaseException`` on the way out runs
(``write_bundle`` removes its staging directory there). The few steps that must not be split by a
signal (create a staging directory and record it, rename it into place, remove it) run inside
``signals_deferred()``, which holds both signals until the step is done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from types import FrameType
from typing import Any, TextIO

from .errors import AfmcError

log = logging.getLogger("afmc")

#: Exit codes for a command stopped by a signal: 128 + the signal number, as shells report it.
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM


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


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to ``sys.stderr`` as it is when the record is emitted, so that a caller
    that redirects stderr (tests, ``afmc.fuzz``) captures log lines too."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int,
    file: TextIO | None = None, line: str | None = None,
) -> None:
    """A Python warning (numpy's ``RuntimeWarning`` on a model's odd constants, say) as one log line."""
    where = f"{os.path.basename(filename)}:{lineno}"
    text = str(message).replace("\n", " ")
    logging.getLogger("afmc").warning("%s: %s (%s)", category.__name__, text, where)


def configure_logging(verbose: int) -> None:
    """``afmc: <level>: message`` lines on stderr; warnings become such lines too."""
    level = logging.WARNING - 10 * min(verbose, 2)
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("afmc: %(levelname)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    warnings.showwarning = _show_warning


# -- signals -----------------------------------------------------------------------------------


class Terminated(BaseException):
    """SIGTERM arrived. A ``BaseException``, like ``KeyboardInterrupt``: no ``except Exception``
    swallows it, while every ``finally`` on the way out runs."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """While active, SIGTERM raises ``Terminated`` (main thread only; elsewhere a no-op)."""
    if not _main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them to the handlers in place
    before (which raise ``KeyboardInterrupt`` / ``Terminated`` in the CLI).

    For steps that a signal must not split: creating a temporary file or directory and recording
    its name, renaming it into place, removing it. Blocks nest. Main thread only (Python runs
    signal handlers there); elsewhere a no-op.
    """
    if not _main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    previous: dict[int, Any] = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(pending):
            _deliver(signum, previous[signum])


def _deliver(signum: int, handler: Any) -> None:
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)
