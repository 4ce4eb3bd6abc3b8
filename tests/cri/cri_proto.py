"""The CRI messages of cri_api.proto as Python classes, and a gRPC client for its services.

No protoc and no generated code: `load` reads the .proto (the part of the language it uses:
`syntax`, `package`, enums, messages whose fields are scalars, enums, messages, `repeated`
or `map<K, V>`, and services of unary rpcs) into a FileDescriptorProto, and google.protobuf
builds the classes from that. The client speaks dicts (json_format, field names as in the
.proto), so a test reads like the CRI's JSON.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The pure-Python protobuf runtime, as tartan.ipam.lease_etcd selects it: whichever module of
# a process imports google.protobuf first fixes the runtime for all, and etcd3's generated
# modules (the etcd tests run in the same pytest process) load only on this one.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

PROTO = Path(__file__).with_name("cri_api.proto")
TOKEN = re.compile(r'"[^"]*"|[A-Za-z_][\w.]*|\d+|[{}()<>=;,]')
_F = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES, "bool": _F.TYPE_BOOL,
    "int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64,
    "uint32": _F.TYPE_UINT32, "uint64": _F.TYPE_UINT64,
}


class ProtoSyntaxError(ValueError):
    pass


class _Tokens:
    def __init__(self, text: str) -> None:
        text = re.sub(r"//[^\n]*", "", text)
        self.items = TOKEN.findall(text)
        self.pos = 0

    def peek(self) -> str:
        return self.items[self.pos] if self.pos < len(self.items) else ""

    def take(self, *expected: str) -> str:
        token = self.peek()
        if not token or (expected and token not in expected):
            want = " or ".join(expected) or "a token"
            raise ProtoSyntaxError(f"expected {want} at token {self.pos}, got {token!r}")
        self.pos += 1
        return token

    def number(self) -> int:
        token = self.take()
        if not token.isdigit():
            raise ProtoSyntaxError(f"expected a number at token {self.pos}, got {token!r}")
        return int(token)


@dataclass
class _Field:
    name: str
    number: int
    type: str
    repeated: bool = False
    map_types: tuple[str, str] | None = None


@dataclass
class _Parsed:
    package: str = ""
    messages: dict[str, list[_Field]] = field(default_factory=dict)
    enums: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    services: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)


def _parse_field(tokens: _Tokens) -> _Field:
    if tokens.peek() == "map":
        tokens.take("map")
        tokens.take("<")
        key = tokens.take()
        tokens.take(",")
        value = tokens.take()
        tokens.take(">")
        name = tokens.take()
        tokens.take("=")
        return _Field(name, tokens.number(), "", map_types=(key, value))
    repeated = tokens.peek() == "repeated"
    if repeated:
        tokens.take("repeated")
    type_name, name = tokens.take(), tokens.take()
    tokens.take("=")
    return _Field(name, tokens.number(), type_name, repeated)


def _block(tokens: _Tokens) -> Iterator[None]:
    """Yield once per item of a `{ ... }` block, consuming the braces."""
    tokens.take("{")
    while tokens.peek() != "}":
        yield
    tokens.take("}")


def parse(text: str) -> _Parsed:
    tokens, out = _Tokens(text), _Parsed()
    while tokens.peek():
        keyword = tokens.take("syntax", "package", "message", "enum", "service")
        if keyword == "syntax":
            tokens.take("=")
            if tokens.take() != '"proto3"':
                raise ProtoSyntaxError("only proto3 is supported")
            tokens.take(";")
        elif keyword == "package":
            out.package = tokens.take()
            tokens.take(";")
        elif keyword == "message":
            fields = out.messages.setdefault(tokens.take(), [])
            for _ in _block(tokens):
                fields.append(_parse_field(tokens))
                tokens.take(";")
        elif keyword == "enum":
            values = out.enums.setdefault(tokens.take(), [])
            for _ in _block(tokens):
                name = tokens.take()
                tokens.take("=")
                values.append((name, tokens.number()))
                tokens.take(";")
        else:
            methods = out.services.setdefault(tokens.take(), [])
            for _ in _block(tokens):
                tokens.take("rpc")
                name = tokens.take()
                tokens.take("(")
                request = tokens.take()
                tokens.take(")")
                tokens.take("returns")
                tokens.take("(")
                response = tokens.take()
                tokens.take(")")
                tokens.take("{")
                tokens.take("}")
                methods.append((name, request, response))
    return out


# --------------------------------------------------------------------------- descriptors


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _set_type(proto: _F, type_name: str, parsed: _Parsed) -> None:
    if type_name in SCALARS:
        proto.type = SCALARS[type_name]  # type: ignore[assignment]
    elif type_name in parsed.enums:
        proto.type = _F.TYPE_ENUM
        proto.type_name = f".{parsed.package}.{type_name}"
    elif type_name in parsed.messages:
        proto.type = _F.TYPE_MESSAGE
        proto.type_name = f".{parsed.package}.{type_name}"
    else:
        raise ProtoSyntaxError(f"unknown type {type_name!r}")


def _add_field(message: descriptor_pb2.DescriptorProto, spec: _Field, parsed: _Parsed,
               ) -> None:
    proto = message.field.add(name=spec.name, number=spec.number,
                              label=_F.LABEL_REPEATED if spec.repeated else _F.LABEL_OPTIONAL)
    if spec.map_types is None:
        _set_type(proto, spec.type, parsed)
        return
    # A map is a repeated nested "<Field>Entry" message of key = 1, value = 2.
    entry = message.nested_type.add(name=f"{_camel(spec.name)}Entry")
    entry.options.map_entry = True
    for number, (name, type_name) in enumerate(zip(("key", "value"), spec.map_types,
                                                   strict=True), start=1):
        part = entry.field.add(name=name, number=number, label=_F.LABEL_OPTIONAL)
        _set_type(part, type_name, parsed)
    proto.label = _F.LABEL_REPEATED
    proto.type = _F.TYPE_MESSAGE
    proto.type_name = f".{parsed.package}.{message.name}.{entry.name}"


def descriptor(parsed: _Parsed, filename: str) -> descriptor_pb2.FileDescriptorProto:
    out = descriptor_pb2.FileDescriptorProto(name=filename, package=parsed.package,
                                             syntax="proto3")
    for name, values in parsed.enums.items():
        enum = out.enum_type.add(name=name)
        for label, number in values:
            enum.value.add(name=label, number=number)
    for name, fields in parsed.messages.items():
        message = out.message_type.add(name=name)
        for spec in fields:
            _add_field(message, spec, parsed)
    return out


@dataclass
class Api:
    package: str
    messages: dict[str, type[Message]]
    methods: dict[str, tuple[str, str, str]]  # rpc name -> (service, request, response)


def load(path: Path = PROTO) -> Api:
    parsed = parse(path.read_text())
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor(parsed, f"tartan_tests/{path.name}"))
    messages = {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{parsed.package}.{name}")) for name in parsed.messages}
    methods = {rpc: (service, request, response)
               for service, rpcs in parsed.services.items()
               for rpc, request, response in rpcs}
    return Api(parsed.package, messages, methods)


# --------------------------------------------------------------------------- the client


class CriError(Exception):
    """A CRI call that failed: the method, the gRPC status code and the runtime's message."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method}: {code.name}: {details}")
        self.method, self.code, self.details = method, code, details


class CriClient:
    """Unary calls of the .proto's services on a runtime's unix socket, dicts in and out."""

    def __init__(self, socket_path: str | Path, api: Api | None = None,
                 timeout: float = 120) -> None:
        self.api = api or load()
        self.timeout = timeout
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self._stubs: dict[str, Any] = {}

    def _stub(self, method: str) -> Any:
        if method not in self._stubs:
            service, request, response = self.api.methods[method]
            self._stubs[method] = self.channel.unary_unary(
                f"/{self.api.package}.{service}/{method}",
                request_serializer=self.api.messages[request].SerializeToString,
                response_deserializer=self.api.messages[response].FromString)
        return self._stubs[method]

    def call(self, method: str, request: dict | None = None,
             timeout: float | None = None) -> dict:
        _, request_type, _ = self.api.methods[method]
        message = json_format.ParseDict(request or {}, self.api.messages[request_type]())
        try:
            reply = self._stub(method)(message, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise CriError(method, exc.code(), exc.details()) from None
        return json_format.MessageToDict(reply, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    def close(self) -> None:
        self.channel.close()
