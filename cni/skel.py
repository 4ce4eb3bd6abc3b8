"""The dispatcher every Tartan plugin runs in.

It reads the CNI_* environment and the stdin config, validates them as the spec says, gates
the version once, calls the plugin's handler for the command, and turns any typed error into
error JSON. It takes env and stdin as arguments and returns the reply, so the same code
serves a plugin process, the agent's socket, and the tests.

Only the standard library is imported here: this is the plugin's entry path.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tartan.cni import errors
from tartan.cni.types import CURRENT_VERSION, SUPPORTED_VERSIONS, Result, at_least, check_supported

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")

# Which variables each command needs (containernetworking/cni SPEC.md, "Parameters").
_REQUIRED: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": (),
    "STATUS": (),
    "VERSION": (),
}

_CONTAINER_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
IFNAMSIZ = 16


@dataclass
class CmdArgs:
    """One invocation, as the handler sees it."""

    command: str
    container_id: str
    netns: str
    ifname: str
    args: dict[str, str]
    path: list[str]
    stdin: bytes
    config: dict
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def cni_version(self) -> str:
        return str(self.config.get("cniVersion", CURRENT_VERSION))

    def prev_result(self) -> Result | None:
        prev = self.config.get("prevResult")
        if prev is None:
            return None
        return Result.from_dict(prev, self.cni_version)


Handler = Callable[[CmdArgs], "Result | None"]


@dataclass
class Plugin:
    """A plugin's handlers. Unset GC and STATUS succeed doing nothing."""

    name: str
    add: Handler
    delete: Handler
    check: Handler
    gc: Handler | None = None
    status: Handler | None = None

    def handler(self, command: str) -> Handler | None:
        return {
            "ADD": self.add,
            "DEL": self.delete,
            "CHECK": self.check,
            "GC": self.gc,
            "STATUS": self.status,
        }[command]


@dataclass
class Reply:
    exit_code: int
    stdout: str


def validate_ifname(name: str, field_name: str = "CNI_IFNAME") -> None:
    if not name:
        raise errors.InvalidEnv(f"{field_name} is empty")
    if len(name) >= IFNAMSIZ:
        raise errors.InvalidEnv(
            f"{field_name} {name!r} is longer than {IFNAMSIZ - 1} characters"
        )
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        raise errors.InvalidEnv(
            f"{field_name} {name!r} is not a valid interface name "
            "(no '/', ':' or whitespace, not '.' or '..')"
        )


def validate_container_id(container_id: str) -> None:
    if not _CONTAINER_ID.match(container_id):
        raise errors.InvalidEnv(
            f"CNI_CONTAINERID {container_id!r} is invalid: it must start with a letter or "
            "digit and contain only letters, digits, '_', '.' and '-'"
        )


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS is "K1=V1;K2=V2"."""
    out: dict[str, str] = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise errors.InvalidEnv(f"CNI_ARGS: {pair!r} is not KEY=VALUE")
        out[key] = value
    return out


def parse_config(stdin: bytes) -> dict:
    try:
        config = json.loads(stdin or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.DecodeFailure(f"network config on stdin is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise errors.DecodeFailure("network config on stdin must be a JSON object")
    return config


def read_cmd_args(command: str, env: Mapping[str, str], stdin: bytes) -> CmdArgs:
    missing = [name for name in _REQUIRED[command] if not env.get(name)]
    if missing:
        raise errors.InvalidEnv(f"required environment variables missing: {', '.join(missing)}")
    container_id = env.get("CNI_CONTAINERID", "")
    if container_id:
        validate_container_id(container_id)
    ifname = env.get("CNI_IFNAME", "")
    if ifname or command in ("ADD", "DEL", "CHECK"):
        validate_ifname(ifname)
    config = parse_config(stdin)
    return CmdArgs(
        command=command,
        container_id=container_id,
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        path=[p for p in env.get("CNI_PATH", "").split(os.pathsep) if p],
        stdin=stdin,
        config=config,
        env=env,
    )


def check_version_gate(args: CmdArgs) -> None:
    version = args.config.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise errors.InvalidConfig("network config has no cniVersion")
    check_supported(version)
    if args.command == "CHECK" and not at_least(version, "0.4.0"):
        raise errors.IncompatibleVersion(f"CHECK needs cniVersion 0.4.0 or later, got {version}")
    if args.command in ("GC", "STATUS") and not at_least(version, "1.1.0"):
        raise errors.IncompatibleVersion(
            f"{args.command} needs cniVersion 1.1.0 or later, got {version}"
        )


def version_reply() -> Reply:
    body = {"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}
    return Reply(0, json.dumps(body))


def _error_version(stdin: bytes) -> str:
    try:
        version = json.loads(stdin).get("cniVersion")
    except Exception:
        return CURRENT_VERSION
    return version if version in SUPPORTED_VERSIONS else CURRENT_VERSION


def error_reply(exc: errors.CniError, stdin: bytes) -> Reply:
    return Reply(1, json.dumps(errors.to_dict(exc, _error_version(stdin))))


def run(plugin: Plugin, env: Mapping[str, str], stdin: bytes) -> Reply:
    """Run one CNI request and return what the plugin prints and its exit code."""
    try:
        command = env.get("CNI_COMMAND", "")
        if command not in COMMANDS:
            raise errors.InvalidEnv(
                f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}"
                if command
                else f"CNI_COMMAND is not set: {plugin.name} is a CNI plugin, run by a container "
                "runtime with CNI_* variables and a network config on stdin"
            )
        if command == "VERSION":
            return version_reply()
        args = read_cmd_args(command, env, stdin)
        check_version_gate(args)
        handler = plugin.handler(command)
        result = handler(args) if handler else None
        if command == "ADD":
            if result is None:
                raise errors.IOFailure(f"{plugin.name} produced no result for ADD")
            return Reply(0, json.dumps(result.to_dict(args.cni_version)))
        return Reply(0, "")
    except errors.CniError as exc:
        return error_reply(exc, stdin)
    except OSError as exc:
        return error_reply(errors.IOFailure(f"{plugin.name}: {exc}"), stdin)
    except Exception as exc:  # a bug: still answer in CNI's terms, never a bare traceback
        if os.environ.get("TARTAN_DEBUG"):
            traceback.print_exc(file=sys.stderr)
        err = errors.IOFailure(
            f"{plugin.name}: internal error", details=f"{type(exc).__name__}: {exc}"
        )
        return error_reply(err, stdin)


def printed(reply: Reply) -> bytes:
    """What a plugin process prints for `reply` (the agent's socket sends the same bytes)."""
    return (reply.stdout + "\n").encode() if reply.stdout else b""


def emit(reply: Reply) -> int:
    out = printed(reply)
    if out:
        sys.stdout.buffer.write(out)
        sys.stdout.buffer.flush()
    return reply.exit_code


def main(plugin: Plugin) -> int:
    """Entry point for a plugin process: real environment, stdin and stdout."""
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    return emit(run(plugin, os.environ, stdin))
