"""Typed CNI errors. Each carries the spec's code; the dispatcher turns them into error JSON.

Codes 1-99 are the spec's; 100+ are Tartan's own (the spec reserves them for plugins).
"""

from __future__ import annotations

# Spec codes (CNI 1.1.0, "Error" section).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51

# Tartan's own codes.
CHECK_MISMATCH = 100
KERNEL_FAILURE = 101
IPTABLES_FAILURE = 102
DELEGATE_FAILURE = 103


class CniError(Exception):
    """An error a plugin reports to its runtime."""

    code = IO_FAILURE

    def __init__(self, msg: str, details: str = "", code: int | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details
        if code is not None:
            self.code = code

    def to_dict(self, cni_version: str) -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


class IncompatibleVersion(CniError):
    code = INCOMPATIBLE_VERSION


class UnsupportedField(CniError):
    code = UNSUPPORTED_FIELD


class ContainerUnknown(CniError):
    code = CONTAINER_UNKNOWN


class InvalidEnv(CniError):
    code = INVALID_ENV


class IOFailure(CniError):
    code = IO_FAILURE


class DecodeFailure(CniError):
    code = DECODE_FAILURE


class InvalidConfig(CniError):
    code = INVALID_CONFIG


class TryAgainLater(CniError):
    code = TRY_AGAIN_LATER


class PluginNotAvailable(CniError):
    code = PLUGIN_NOT_AVAILABLE


class LimitedConnectivity(CniError):
    code = LIMITED_CONNECTIVITY


class CheckMismatch(CniError):
    code = CHECK_MISMATCH


class KernelFailure(CniError):
    code = KERNEL_FAILURE


class IptablesFailure(CniError):
    code = IPTABLES_FAILURE


class DelegateFailure(CniError):
    code = DELEGATE_FAILURE


class Gone(Exception):
    """Something DEL wanted to remove is already gone; DEL treats this as success."""


class NetnsGone(Gone):
    pass


class LinkGone(Gone):
    pass
