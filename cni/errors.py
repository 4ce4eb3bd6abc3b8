"""Typed CNI errors. Each carries the spec's code; the dispatcher turns them into error JSON.

Codes 1-99 are the spec's; 100+ are Tartan's own (the spec reserves them for plugins).
"""

from __future__ import annotations

from tartan.kernel.errors import (
    IPTABLES_FAILURE,
    KERNEL_FAILURE,
    Gone,
    IptablesFailure,
    KernelFailure,
    LinkGone,
    NetnsGone,
    TartanError,
)

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
DELEGATE_FAILURE = 103  # 101 (kernel) and 102 (iptables) come with the kernel layer's errors


# Every typed error is a CniError: the kernel layer's errors carry their codes too.
CniError = TartanError


def to_dict(exc: CniError, cni_version: str) -> dict:
    """The spec's error JSON for `exc`."""
    out = {"cniVersion": cni_version, "code": exc.code, "msg": exc.msg}
    if exc.details:
        out["details"] = exc.details
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


class DelegateFailure(CniError):
    code = DELEGATE_FAILURE


# Re-exported: the kernel layer's errors, as CNI code sees them.
__all__ = ["IPTABLES_FAILURE", "KERNEL_FAILURE", "Gone", "IptablesFailure", "KernelFailure",
           "LinkGone", "NetnsGone", "TartanError"]
