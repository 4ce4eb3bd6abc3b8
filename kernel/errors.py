"""Typed errors of the kernel layer, and the base every Tartan error shares.

An error carries a message for people and `code`, the number a CNI plugin reports it with,
so an error raised deep in the kernel layer reaches the runtime unchanged (tartan.cni.errors
adds the spec's codes). The agent and the CLI print only the message.
"""

from __future__ import annotations

IO_FAILURE = 5  # the CNI spec's code for a failure that says nothing more precise
KERNEL_FAILURE = 101
IPTABLES_FAILURE = 102


class TartanError(Exception):
    """An error a user or a runtime is shown: one message, optional details, a code."""

    code = IO_FAILURE

    def __init__(self, msg: str, details: str = "", code: int | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details
        if code is not None:
            self.code = code


class KernelFailure(TartanError):
    """A netlink, sysctl or namespace operation failed."""

    code = KERNEL_FAILURE


class IptablesFailure(TartanError):
    """iptables(-save/-restore) or ipset failed, or cannot be run."""

    code = IPTABLES_FAILURE


class IpsetFailure(IptablesFailure):
    """ipset failed, cannot be run, or was given a set it must not see (same code)."""


class Gone(Exception):
    """Something DEL wanted to remove is already gone; DEL treats this as success."""


class NetnsGone(Gone):
    pass


class LinkGone(Gone):
    pass
