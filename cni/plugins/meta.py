"""tartan: the meta plugin, as flannel's CNI plugin.

ADD reads the agent's subnet file, builds a tartan-bridge + tartan-ipam config for this node's
subnet, stores it under <dataDir>/<containerID> and delegates to it. DEL, CHECK use the stored
config, so a pod is torn down with the config it was made with even after the node's subnet
changed; when the record is lost or corrupt, DEL rebuilds the config from the subnet file
rather than failing forever. GC and STATUS delegate with a config built from the subnet file.

Standard library and tartan.cni only at module level: this is the plugin's entry path.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

from tartan.cni import errors, invoke, skel, subnet_env
from tartan.cni.plugins.meta_config import (
    PASS_THROUGH,
    MetaConfig,
    build_delegate,
    parse,
)
from tartan.cni.types import Result
from tartan.kernel.files import write_atomic

GC_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


@dataclass
class DelegateStore:
    """One delegate config per container, in flannel's layout: <dataDir>/<containerID>.

    Container ids start with a letter or digit (the dispatcher checks), so the dot-prefixed
    temp files can never be mistaken for a record.
    """

    directory: str

    def path(self, container_id: str) -> str:
        return os.path.join(self.directory, container_id)

    def save(self, container_id: str, config: dict) -> None:
        """Write-then-rename: a crash leaves the old record or the new one, never half of one."""
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            write_atomic(self.path(container_id), json.dumps(config), mode=0o600)
        except OSError as exc:
            raise errors.IOFailure(
                f"cannot store the delegate config in dataDir {self.directory}: {exc}"
            ) from None

    def load(self, container_id: str) -> dict | None:
        """The stored config, or None when there is none or it cannot be used."""
        try:
            with open(self.path(container_id), encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(config, dict) or not isinstance(config.get("name"), str):
            return None
        plugin_type = config.get("type")
        return config if isinstance(plugin_type, str) and plugin_type else None

    def remove(self, container_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(container_id))

    def container_ids(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith(".")
                      and os.path.isfile(self.path(n)))

    def collect(self, network: str, valid: set[str]) -> None:
        """Remove this network's records (and unreadable ones) of containers not in `valid`."""
        for container_id in self.container_ids():
            if container_id in valid:
                continue
            stored = self.load(container_id)
            if stored is None or stored["name"] == network:
                self.remove(container_id)


def _invoke(command: str, args: skel.CmdArgs, delegate: dict) -> Result | None:
    stdin = json.dumps(delegate).encode()
    return invoke.delegate(command, delegate["type"], stdin, args.env, args.path)


def _rebuild(conf: MetaConfig) -> dict:
    """The delegate config from the current subnet file."""
    return build_delegate(conf, subnet_env.read(conf.subnet_file))


def _for_this_call(delegate: dict, args: skel.CmdArgs) -> dict:
    """A stored config answers in the runtime's current version, with this call's extras."""
    out = dict(delegate)
    out["cniVersion"] = args.cni_version
    for key in (*PASS_THROUGH, "prevResult"):
        if key in args.config:
            out[key] = args.config[key]
    return out


def _resolve(args: skel.CmdArgs, conf: MetaConfig) -> dict:
    """The stored config, else one rebuilt from the subnet file (TryAgainLater when the
    file is not there either)."""
    delegate = DelegateStore(conf.data_dir).load(args.container_id)
    if delegate is None:
        delegate = _rebuild(conf)
    return _for_this_call(delegate, args)


def cmd_add(args: skel.CmdArgs) -> Result | None:
    conf = parse(args.config)
    delegate = _rebuild(conf)
    store = DelegateStore(conf.data_dir)
    store.save(args.container_id, delegate)  # before delegating: a DEL may follow any failure
    try:
        return _invoke("ADD", args, delegate)
    except BaseException:
        store.remove(args.container_id)
        raise


def cmd_del(args: skel.CmdArgs) -> None:
    conf = parse(args.config)
    try:
        delegate: dict | None = _resolve(args, conf)
    except errors.TryAgainLater:
        delegate = None  # no record and no subnet file: this node never set the pod up
    if delegate is not None:
        _invoke("DEL", args, delegate)
    # Only after the delegate succeeded: a retried DEL needs the same config.
    DelegateStore(conf.data_dir).remove(args.container_id)


def cmd_check(args: skel.CmdArgs) -> None:
    conf = parse(args.config)
    if args.config.get("prevResult") is None:
        raise errors.InvalidConfig("CHECK needs prevResult in the config")
    _invoke("CHECK", args, _resolve(args, conf))


def _attachments(config: dict) -> tuple[str, list]:
    for key in GC_KEYS:
        if isinstance(config.get(key), list):
            return key, config[key]
    raise errors.InvalidConfig("GC needs cni.dev/valid-attachments (a list) in the config")


def cmd_gc(args: skel.CmdArgs) -> None:
    conf = parse(args.config)
    key, attachments = _attachments(args.config)
    delegate = _rebuild(conf)
    delegate[key] = attachments
    _invoke("GC", args, delegate)
    valid = {str(a.get("containerID", "")) for a in attachments if isinstance(a, dict)}
    DelegateStore(conf.data_dir).collect(conf.name, valid)


def cmd_status(args: skel.CmdArgs) -> None:
    conf = parse(args.config)
    try:
        env = subnet_env.read(conf.subnet_file)
    except errors.TryAgainLater:
        raise errors.PluginNotAvailable(
            f"subnet file {conf.subnet_file} does not exist: is tartand running?"
        ) from None
    except errors.CniError as exc:
        raise errors.PluginNotAvailable(exc.msg) from None
    _invoke("STATUS", args, build_delegate(conf, env))


PLUGIN = skel.Plugin("tartan", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc,
                     status=cmd_status)


def main() -> int:
    return skel.main(PLUGIN)
