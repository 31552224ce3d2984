"""Parse the IR text form written by ``printer.py`` back into a ``Module``."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ParseError, VerifyError
from ..textfile import read_text_file
from . import dtypes
from .core import Attrs, Constant, Module, Op, SymbolRef, TensorType, Value
from .verify import MAX_TENSOR_BYTES_ENV, format_bytes, max_tensor_bytes, verify_nn_types

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*)
  | (?P<type>tensor<[^>]*>)
  | (?P<value>%(?:"(?:[^"\\]|\\.)*"|[A-Za-z0-9_.$/-]+))
  | (?P<symbol>@(?:"(?:[^"\\]|\\.)*"|[A-Za-z0-9_.$/-]+))
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>[-+]?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+|inf\b|nan\b))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<arrow>->)
  | (?P<punct>[(){}\[\]<>,=:])
    """,
    re.VERBOSE,
)


@dataclass
class Token:
    kind: str
    text: str
    pos: int


def tokenize(text: str, file: str | None = None) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ParseError(f"{_where(text, pos)}: unexpected character {text[pos]!r}", file=file)
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, match.group(), pos))
        pos = match.end()
    tokens.append(Token("eof", "", len(text)))
    return tokens


def _where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {column}"


def parse_type(text: str) -> TensorType:
    """``tensor<1x3xf32>`` or ``tensor<f32>`` into a ``TensorType``."""
    body = text[len("tensor<") : -1]
    *dims, dtype = body.split("x") if body not in dtypes.DTYPES else [body]
    try:
        shape = tuple(-1 if d == "?" else int(d) for d in dims)
        return TensorType(shape, dtype)
    except ValueError:
        raise ValueError(f"malformed type {text}") from None


def _unquote(text: str) -> str:
    body = text[1:]
    return _string(body) if body.startswith('"') else body


def _string(text: str) -> str:
    """A quoted string token's value; ``ValueError`` when it is not a valid JSON string (a raw
    control character or a bad escape, which the tokenizer's pattern lets through)."""
    try:
        return str(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed string {_clip(text)}: {exc.msg}") from None


def _clip(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters for a message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    """Control characters escaped (``\\n``): a name from the file must not break the error's line."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text)


class Parser:
    def __init__(self, text: str, file: str | None = None) -> None:
        self.text = text
        self.file = file
        self.tokens = tokenize(text, file)
        self.index = 0
        self.values: dict[str, Value] = {}
        self.max_bytes = max_tensor_bytes()
        self.depth = 0

    # -- token helpers ---------------------------------------------------------------------
    @property
    def peek(self) -> Token:
        return self.tokens[self.index]

    def next(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def error(self, message: str, token: Token | None = None) -> ParseError:
        token = token or self.peek
        return ParseError(f"{_where(self.text, token.pos)}: {_one_line(message)}", file=self.file)

    def expect(self, text: str) -> Token:
        token = self.next()
        if token.text != text:
            raise self.error(f"expected {text!r}, found {token.text or 'end of file'!r}", token)
        return token

    def expect_kind(self, kind: str) -> Token:
        token = self.next()
        if token.kind != kind:
            raise self.error(f"expected a {kind}, found {token.text or 'end of file'!r}", token)
        return token

    def unquote(self, token: Token) -> str:
        """The name a value or symbol token spells (quoted names are JSON strings)."""
        try:
            return _unquote(token.text)
        except ValueError as exc:
            raise self.error(str(exc), token) from None

    def string(self, token: Token) -> str:
        try:
            return _string(token.text)
        except ValueError as exc:
            raise self.error(str(exc), token) from None

    def accept(self, text: str) -> bool:
        if self.peek.text == text:
            self.index += 1
            return True
        return False

    def type(self) -> TensorType:
        token = self.expect_kind("type")
        try:
            return parse_type(token.text)
        except ValueError as exc:
            raise self.error(str(exc), token) from None

    def declared(self, what: str, type: TensorType, token: Token) -> TensorType:
        """``type`` of a declared value or constant, refused above the tensor size limit."""
        if type.is_static and type.nbytes > self.max_bytes:
            raise self.error(
                f"{what} is {format_bytes(type.nbytes)} ({type}), over the {format_bytes(self.max_bytes)} "
                f"limit for one tensor (${MAX_TENSOR_BYTES_ENV})",
                token,
            )
        return type

    # -- grammar ---------------------------------------------------------------------------
    def module(self) -> Module:
        self.expect("module")
        module = Module(self.unquote(self.expect_kind("symbol")))
        if self.accept("attributes"):
            module.attributes = self.attr_dict()
        self.expect("{")
        while self.peek.text == "const":
            constant = self.constant()
            if constant.name in module.constants:
                raise self.error(f"duplicate constant @{constant.name}")
            module.constants[constant.name] = constant
        self.expect("graph")
        self.expect("(")
        while self.peek.text != ")":
            token = self.expect_kind("value")
            name = self.unquote(token)
            self.expect(":")
            type = self.declared(f"input %{name}", self.type(), token)
            self.define(name, module.add_input(name, type) if name not in self.values else None)
            if not self.accept(","):
                break
        self.expect(")")
        self.expect("{")
        while self.peek.text != "return":
            module.append(self.op(module))
        self.expect("return")
        if self.peek.kind == "value":
            module.outputs.append(self.use())
            while self.accept(","):
                module.outputs.append(self.use())
        self.expect("}")
        self.expect("}")
        if self.peek.kind != "eof":
            raise self.error(f"unexpected {self.peek.text!r} after the module")
        return module

    def define(self, name: str, value: Value | None) -> None:
        if value is None:
            raise self.error(f"value %{name} is defined twice")
        self.values[name] = value

    def use(self) -> Value:
        token = self.expect_kind("value")
        name = self.unquote(token)
        if name not in self.values:
            raise self.error(f"use of undefined value %{name}", token)
        return self.values[name]

    def constant(self) -> Constant:
        self.expect("const")
        token = self.expect_kind("symbol")
        name = self.unquote(token)
        self.expect(":")
        type = self.declared(f"constant @{name}", self.type(), token)
        self.expect("=")
        kind = self.expect_kind("ident")
        if kind.text == "dense":
            array = self.dense_body(type)
            return Constant(name, type, array)
        if kind.text in ("elided", "base64"):
            self.expect("<")
            payload = self.string(self.expect_kind("string"))
            self.expect(">")
            if kind.text == "elided":
                return Constant(name, type, None, digest=payload)
            try:
                raw = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise self.error(f"constant @{name}: malformed base64 data: {exc}", kind) from None
            np_dtype = dtypes.to_numpy(type.dtype).newbyteorder("<")
            if len(raw) != type.numel * np_dtype.itemsize:
                raise self.error(f"constant @{name}: {len(raw)} bytes do not fill {type}", kind)
            return Constant(name, type, np.frombuffer(raw, np_dtype).astype(np_dtype.newbyteorder("=")).reshape(type.shape))
        raise self.error(f"expected dense, elided or base64, found {kind.text!r}", kind)

    def dense_body(self, type: TensorType) -> np.ndarray:
        token = self.expect("<")
        items = self.attr_value()
        self.expect(">")
        return self.dense_array(items, type, token)

    def dense_array(self, items: Any, type: TensorType, token: Token) -> np.ndarray:
        if not isinstance(items, tuple):
            items = (items,)
        if type.dtype == "str":
            array = np.array(list(items), dtype=object)
        else:
            try:
                array = np.array(items, dtype=dtypes.to_numpy(type.dtype))
            except (TypeError, ValueError, OverflowError) as exc:
                raise self.error(f"dense elements do not fit {type}: {exc}", token) from None
        if array.size != type.numel:
            raise self.error(f"dense has {array.size} elements, {type} needs {type.numel}", token)
        return array.reshape(type.shape)

    def op(self, module: Module) -> Op:
        names: list[str] = []
        if self.peek.kind == "value":
            names.append(self.unquote(self.next()))
            while self.accept(","):
                names.append(self.unquote(self.expect_kind("value")))
            self.expect("=")
        name_token = self.expect_kind("ident")
        if "." not in name_token.text:
            raise self.error(f"op name {name_token.text!r} lacks a dialect", name_token)
        self.expect("(")
        operands: list[Value | None] = []
        while self.peek.text != ")":
            operands.append(None if self.accept("none") else self.use())
            if not self.accept(","):
                break
        self.expect(")")
        attributes = self.attr_dict() if self.peek.text == "{" else Attrs()
        self.expect(":")
        types: list[TensorType] = []
        if self.accept("("):
            self.expect(")")
        else:
            types.append(self.type())
            while self.accept(","):
                types.append(self.type())
        if len(types) != len(names):
            raise self.error(f"{name_token.text} has {len(names)} results but {len(types)} types", name_token)
        loc = ""
        if self.accept("loc"):
            self.expect("(")
            loc = self.string(self.expect_kind("string"))
            self.expect(")")
        results = []
        for name, type in zip(names, types):
            self.declared(f"value %{name}", type, name_token)
            if name in self.values:
                raise self.error(f"value %{name} is defined twice")
            module.claim_name(name)
            results.append(Value(name, type))
        op = Op(name_token.text, operands, results, attributes, loc)
        for result in results:
            self.values[result.name] = result
        return op

    def attr_dict(self) -> Attrs:
        self.expect("{")
        items: list[tuple[str, Any]] = []
        while self.peek.text != "}":
            token = self.next()
            if token.kind == "string":
                key = self.string(token)
            elif token.kind == "ident":
                key = token.text
            else:
                raise self.error(f"expected an attribute name, found {token.text!r}", token)
            self.expect("=")
            items.append((key, self.attr_value()))
            if not self.accept(","):
                break
        self.expect("}")
        return Attrs(items)

    def attr_value(self) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise self.error(f"attribute nested more than {MAX_NESTING} levels deep")
            return self._attr_value()
        finally:
            self.depth -= 1

    def _attr_value(self) -> Any:
        token = self.peek
        if token.text == "[":
            self.next()
            items = []
            while self.peek.text != "]":
                items.append(self.attr_value())
                if not self.accept(","):
                    break
            self.expect("]")
            return tuple(items)
        if token.text == "{":
            return self.attr_dict()
        self.next()
        if token.kind == "number":
            text = token.text
            try:
                return float(text) if any(c in text for c in ".eEin") else int(text)
            except ValueError as exc:  # an integer past Python's digit limit
                raise self.error(f"malformed number {_clip(text)}: {exc}", token) from None
        if token.kind == "string":
            return self.string(token)
        if token.kind == "symbol":
            return SymbolRef(self.unquote(token))
        if token.kind == "type":
            try:
                return parse_type(token.text)
            except ValueError as exc:
                raise self.error(str(exc), token) from None
        if token.text in ("true", "false"):
            return token.text == "true"
        if token.text == "dense":
            self.expect("<")
            items = self.attr_value()
            self.expect(">")
            self.expect(":")
            return self.dense_array(items, self.type(), token)
        raise self.error(f"expected an attribute value, found {token.text or 'end of file'!r}", token)


#: Attribute values nest (arrays of arrays, dictionaries) at most this deep.
MAX_NESTING = 64


def read_ir_file(path: str | os.PathLike[str]) -> str:
    """The text of an IR file: a regular UTF-8 file no larger than the tensor size limit."""
    limit = max_tensor_bytes()
    return read_text_file(
        path, what="IR file", limit=limit, error=ParseError,
        too_large=f"IR file larger than the {format_bytes(limit)} limit (${MAX_TENSOR_BYTES_ENV})",
    )



def parse_file(path: str | os.PathLike[str]) -> Module:
    """``parse_module(read_ir_file(path))``, errors naming the file."""
    return parse_module(read_ir_file(path), file=os.fspath(path))


def parse_module(text: str, file: str | None = None) -> Module:
    """Parse IR text; errors say the line and column.

    Text comes from outside afmc (a ``.mlir`` file, a bundle), so the ``nn`` ops' result types are
    also checked against ONNX type inference here (``verify_nn_types``); ``verify`` does the rest.
    """
    module = Parser(text, file).module()
    try:
        verify_nn_types(module)
    except VerifyError as exc:
        exc.file = exc.file or file
        raise
    return module
