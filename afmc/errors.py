"""One tree of errors; the CLI renders each as a single `afmc: error:` line.

Every error carries where it happened (file, node, key) so that a user can act on the
message without a traceback. ``exit_code`` follows the command-line contract in DESIGN.md.
"""

from __future__ import annotations


class AfmcError(Exception):
    """Base of all afmc errors. Exit code 2: bad input or usage."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        node: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.node = node
        self.key = key

    def render(self) -> str:
        """One line: ``file: node 'n': key 'k': message`` with the parts that are known."""
        parts = []
        if self.file:
            parts.append(str(self.file))
        if self.node:
            parts.append(f"node '{self.node}'")
        if self.key:
            parts.append(f"key '{self.key}'")
        parts.append(self.message)
        return ": ".join(parts).replace("\n", " ")


class UsageError(AfmcError):
    """Bad command-line usage (unknown pass, malformed option value)."""


class FrontendError(AfmcError):
    """The ONNX model cannot be read or lowered (malformed, unsupported op, dynamic shape)."""


class UnsupportedError(FrontendError):
    """An op or attribute value that afmc does not implement."""


class ParseError(AfmcError):
    """IR text or a pipeline string that does not parse."""


class VerifyError(AfmcError):
    """The IR breaks an invariant (SSA, types, attributes)."""


class PassError(AfmcError):
    """A pass failed; the message names the pass, the passes before it and the op."""

    exit_code = 1


class TargetError(AfmcError):
    """A target description is unknown or invalid; the message names the key."""


class DoesNotFit(AfmcError):
    """The model does not fit the chip. Exit code 3."""

    exit_code = 3


class InternalError(AfmcError):
    """A bug in afmc. Exit code 1."""

    exit_code = 1
