"""Delegation to another plugin, as the reference `invoke` package does.

The delegate is found by its `type` on CNI_PATH and run with the caller's environment, the
command overridden, and the same network config on stdin. Its error JSON becomes a CniError
with the delegate's own code. Tartan's own plugins (`tartan.cni.registry`) are the exception
to the exec: once found on CNI_PATH they run in this process through the same dispatcher,
saving an interpreter start per delegation (so a wrapper script put in their place is not
run).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping

from tartan.cni import errors, registry
from tartan.cni.types import Result


def find_in_path(plugin_type: str, paths: list[str]) -> str:
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        raise errors.InvalidConfig(f"plugin type {plugin_type!r} is not a valid plugin name")
    if not paths:
        raise errors.InvalidEnv(f"CNI_PATH is empty; cannot find plugin {plugin_type!r}")
    for directory in paths:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise errors.InvalidConfig(
        f"plugin {plugin_type!r} not found in CNI_PATH ({os.pathsep.join(paths)}): "
        "check the config's type or install the plugin there"
    )


def _run_in_process(plugin_type: str, env: Mapping[str, str], stdin: bytes) -> tuple[int, str]:
    from tartan.cni import skel

    reply = skel.run(registry.load(plugin_type), env, stdin)
    return reply.exit_code, reply.stdout


def _run_exec(path: str, env: Mapping[str, str], stdin: bytes) -> tuple[int, str]:
    try:
        proc = subprocess.run(
            [path], input=stdin, env=dict(env), capture_output=True, check=False
        )
    except OSError as exc:
        raise errors.IOFailure(f"cannot run plugin {path}: {exc}") from None
    return proc.returncode, proc.stdout.decode(errors="replace")


def _error_from(plugin_type: str, exit_code: int, stdout: str) -> errors.CniError:
    try:
        body = json.loads(stdout)
        code = int(body["code"])
        msg = str(body.get("msg", ""))
        details = str(body.get("details", ""))
    except (ValueError, KeyError, TypeError):
        return errors.DelegateFailure(
            f"plugin {plugin_type!r} failed with exit code {exit_code}",
            details=stdout.strip()[:2000],
        )
    return errors.CniError(msg, details=details, code=code)


def delegate(
    command: str,
    plugin_type: str,
    stdin: bytes,
    env: Mapping[str, str],
    paths: list[str],
) -> Result | None:
    """Run `plugin_type` for `command` and return its result (ADD) or None."""
    path = find_in_path(plugin_type, paths)
    child_env = dict(env)
    child_env["CNI_COMMAND"] = command
    if plugin_type in registry.PLUGINS:
        exit_code, stdout = _run_in_process(plugin_type, child_env, stdin)
    else:
        exit_code, stdout = _run_exec(path, child_env, stdin)
    if exit_code != 0:
        raise _error_from(plugin_type, exit_code, stdout)
    if command != "ADD":
        return None
    try:
        return Result.from_dict(json.loads(stdout))
    except ValueError:
        raise errors.DecodeFailure(
            f"plugin {plugin_type!r} printed a result that is not JSON"
        ) from None
