"""Capture filters in tcpdump's language, applied to the inner packet in user space.

A VXLAN hop carries the pod's packet inside UDP, so a kernel filter on the socket would see
only the outer headers. The filter is compiled once by tcpdump itself (`tcpdump -ddd -y
EN10MB`: libpcap's compiler, so the syntax is exactly tcpdump's) into classic BPF, and run
here on each decoded inner Ethernet frame by a small interpreter of that instruction set.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import NamedTuple


class FilterError(ValueError):
    """A filter tcpdump does not accept (its message says why)."""


class Insn(NamedTuple):
    code: int
    jt: int
    jf: int
    k: int


Program = tuple[Insn, ...]
ACCEPT_ALL: Program = (Insn(0x06, 0, 0, 0xFFFFFFFF),)
_MASK = 0xFFFFFFFF


def compile_filter(expression: str) -> Program:
    """The classic BPF program of a tcpdump filter for Ethernet frames."""
    if not expression.strip():
        return ACCEPT_ALL
    try:
        proc = subprocess.run(["tcpdump", "-ddd", "-y", "EN10MB", expression],
                              capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        raise FilterError("tcpdump is not installed (apt install tcpdump): it compiles "
                          "the capture filter") from None
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "rejected"
        raise FilterError(f"bad capture filter {expression!r}: {reason.removeprefix('tcpdump: ')}")
    lines = proc.stdout.split("\n")
    count = int(lines[0])
    return tuple(Insn(*map(int, line.split())) for line in lines[1:1 + count])


def matches(program: Sequence[Insn], frame: bytes) -> bool:
    """Whether `program` accepts `frame` (a load beyond the frame rejects it, as in the
    kernel)."""
    a = x = 0
    memory = [0] * 16
    pc = 0
    size = len(frame)
    while pc < len(program):
        code, jt, jf, k = program[pc]
        pc += 1
        kind = code & 0x07
        if kind in (0x00, 0x01):  # LD, LDX
            value = _load(code, k, x, frame, size, memory)
            if value is None:
                return False
            if kind == 0x00:
                a = value
            else:
                x = value
        elif kind == 0x02:  # ST
            memory[k & 15] = a
        elif kind == 0x03:  # STX
            memory[k & 15] = x
        elif kind == 0x04:  # ALU
            operand = x if code & 0x08 else k
            result = _alu(code & 0xF0, a, operand)
            if result is None:
                return False
            a = result
        elif kind == 0x05:  # JMP
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            operand = x if code & 0x08 else k
            taken = {0x10: a == operand, 0x20: a > operand, 0x30: a >= operand,
                     0x40: bool(a & operand)}[op]
            pc += jt if taken else jf
        elif kind == 0x06:  # RET
            rval = code & 0x18
            return bool(a if rval == 0x10 else x if rval == 0x08 else k)
        elif code & 0xF8 == 0x00:  # MISC TAX
            x = a
        else:  # MISC TXA
            a = x
    return False


def _load(code: int, k: int, x: int, frame: bytes, size: int, memory: list[int]) -> int | None:
    mode, width = code & 0xE0, {0x00: 4, 0x08: 2, 0x10: 1}[code & 0x18]
    if mode == 0x00:  # IMM
        return k & _MASK
    if mode == 0x60:  # MEM
        return memory[k & 15]
    if mode == 0x80:  # LEN
        return size
    if mode == 0xA0:  # MSH: 4 * (frame[k] & 0xf), the IPv4 header length
        return 4 * (frame[k] & 0x0F) if k < size else None
    offset = k if mode == 0x20 else x + k  # ABS, IND
    if offset < 0 or offset + width > size:
        return None
    return int.from_bytes(frame[offset:offset + width], "big")


def _alu(op: int, a: int, operand: int) -> int | None:
    if op in (0x30, 0x90) and operand == 0:
        return None  # division by zero rejects, as in the kernel
    results = {0x00: a + operand, 0x10: a - operand, 0x20: a * operand,
               0x30: a // operand if operand else 0, 0x40: a | operand, 0x50: a & operand,
               0x60: a << operand if operand < 32 else 0, 0x70: a >> operand,
               0x80: -a, 0x90: a % operand if operand else 0, 0xA0: a ^ operand}
    return results[op] & _MASK


VXLAN_INNER = 14 + 20 + 8 + 8  # Ethernet, IPv4 without options, UDP, VXLAN: the inner frame
_LOAD_CLASSES = (0x00, 0x01)  # LD, LDX
_RELOCATED_MODES = (0x20, 0x40, 0xA0)  # ABS, IND, MSH: offsets into the packet
_LEN_MODE = 0x80


def inside_vxlan(program: Program, port: int) -> Program | None:
    """`program` for a link that carries VXLAN to `port`: on a tunnel packet (IPv4 without
    options, UDP to `port`) it runs on the inner frame, on anything else on the packet as it
    is. None when it cannot be moved (it reads the packet's length, which the outer headers
    change)."""
    moved = []
    for insn in program:
        kind, mode = insn.code & 0x07, insn.code & 0xE0
        if kind in _LOAD_CLASSES and mode == _LEN_MODE:
            return None
        if kind in _LOAD_CLASSES and mode in _RELOCATED_MODES:
            insn = insn._replace(k=insn.k + VXLAN_INNER)
        moved.append(insn)
    outer = (
        Insn(0x28, 0, 0, 12),  # ldh [12]: the ethertype
        Insn(0x15, 0, 6, 0x0800),  # IPv4, else to the plain program
        Insn(0x30, 0, 0, 14),  # ldb [14]: version and header length
        Insn(0x15, 0, 4, 0x45),  # no options, else plain
        Insn(0x30, 0, 0, 23),  # ldb [23]: the protocol
        Insn(0x15, 0, 2, 17),  # UDP, else plain
        Insn(0x28, 0, 0, 36),  # ldh [36]: the destination port
        Insn(0x15, 1, 0, port),  # the tunnel's: run the moved program
        Insn(0x05, 0, 0, len(moved)),  # ja over it, to the plain program
    )
    return (*outer, *moved, *program)
