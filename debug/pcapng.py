"""A pcapng writer: one section, one interface block per hop, one enhanced packet block per
packet (nanosecond timestamps, the direction in epb_flags).

The format (draft-ietf-opsawg-pcapng) is small enough to write directly, and this way every
hop is an interface of its own with its name (`node1/veth`) and a description (the pod),
which tcpdump -r, tshark -r and Wireshark show. Little-endian, as the section header says.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

LINKTYPE_ETHERNET = 1
SNAPLEN = 262144

_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END, _OPT_COMMENT = 0, 1
_IF_NAME, _IF_DESCRIPTION, _IF_TSRESOL = 2, 3, 9
_SHB_USERAPPL = 4
_EPB_FLAGS = 2
_NANOSECONDS = 9  # if_tsresol: 10^-9


@dataclass(frozen=True)
class InterfaceBlock:
    index: int
    name: str


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad(value)


def _options(*pairs: tuple[int, bytes]) -> bytes:
    body = b"".join(_option(code, value) for code, value in pairs if value)
    return body + struct.pack("<HH", _OPT_END, 0) if body else b""


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


class Writer:
    """Writes to `stream` as packets come; `flush` after each keeps the file complete up to
    the last packet if the writer is stopped."""

    def __init__(self, stream: BinaryIO, application: str = "tartanctl capture") -> None:
        self.stream = stream
        self.interfaces: list[InterfaceBlock] = []
        header = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1)  # v1.0, length unknown
        self._write(_block(_SHB, header + _options((_SHB_USERAPPL, application.encode()))))

    def interface(self, name: str, description: str = "",
                  linktype: int = LINKTYPE_ETHERNET) -> InterfaceBlock:
        body = struct.pack("<HHI", linktype, 0, SNAPLEN) + _options(
            (_IF_NAME, name.encode()), (_IF_DESCRIPTION, description.encode()),
            (_IF_TSRESOL, bytes([_NANOSECONDS])))
        self._write(_block(_IDB, body))
        made = InterfaceBlock(len(self.interfaces), name)
        self.interfaces.append(made)
        return made

    def packet(self, interface: InterfaceBlock, timestamp_ns: int, data: bytes,
               outbound: bool | None = None, length: int | None = None,
               comment: str = "") -> None:
        """One packet seen on `interface`; `outbound` None when the direction is unknown."""
        flags = b"" if outbound is None else struct.pack("<I", 2 if outbound else 1)
        body = struct.pack("<IIIII", interface.index, timestamp_ns >> 32,
                           timestamp_ns & 0xFFFFFFFF, len(data),
                           len(data) if length is None else length)
        body += _pad(data) + _options((_EPB_FLAGS, flags), (_OPT_COMMENT, comment.encode()))
        self._write(_block(_EPB, body))

    def flush(self) -> None:
        self.stream.flush()

    def _write(self, data: bytes) -> None:
        self.stream.write(data)
