"""The dispatcher, driven with a dict environment and bytes, no root needed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tartan.cni import errors, skel
from tartan.cni.types import IPConfig, Result

CONF = {"cniVersion": "1.1.0", "name": "net", "type": "fake"}
ENV = {"CNI_CONTAINERID": "abc", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin"}


class Recorder:
    def __init__(self, result=None, error=None):
        self.calls: list[skel.CmdArgs] = []
        self.result = result or Result(ips=[IPConfig("10.0.0.2/24", "10.0.0.1")])
        self.error = error

    def __call__(self, args: skel.CmdArgs):
        self.calls.append(args)
        if self.error:
            raise self.error
        return self.result


def plugin(recorder: Recorder) -> skel.Plugin:
    return skel.Plugin("fake", add=recorder, delete=recorder, check=recorder, gc=recorder,
                       status=recorder)


def run(command: str, conf: dict | bytes = CONF, recorder: Recorder | None = None,
        **env) -> tuple[skel.Reply, Recorder]:
    rec = recorder or Recorder()
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    full_env = {**ENV, "CNI_COMMAND": command, **env}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return skel.run(plugin(rec), full_env, stdin), rec


def error(reply: skel.Reply) -> dict:
    assert reply.exit_code == 1
    return json.loads(reply.stdout)


def test_version_lists_every_supported_version():
    reply, rec = run("VERSION", b"")
    body = json.loads(reply.stdout)
    assert body["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    assert body["cniVersion"] == "1.1.0"
    assert rec.calls == []


def test_add_prints_result_in_the_config_version():
    reply, rec = run("ADD", {**CONF, "cniVersion": "0.4.0"})
    assert reply.exit_code == 0
    body = json.loads(reply.stdout)
    assert body["cniVersion"] == "0.4.0"
    assert body["ips"][0]["version"] == "4"
    assert rec.calls[0].container_id == "abc" and rec.calls[0].path == ["/opt/cni/bin"]


def test_del_prints_nothing():
    reply, _ = run("DEL")
    assert reply == skel.Reply(0, "")


def test_del_does_not_need_a_netns():
    reply, _ = run("DEL", CNI_NETNS=None)
    assert reply.exit_code == 0


@pytest.mark.parametrize("missing", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])
def test_add_needs_its_variables(missing):
    reply, rec = run("ADD", **{missing: None})
    body = error(reply)
    assert body["code"] == errors.INVALID_ENV and missing in body["msg"]
    assert rec.calls == []


@pytest.mark.parametrize("ifname", ["", "a" * 16, "eth/0", "eth:0", "eth 0", ".", ".."])
def test_bad_interface_names(ifname):
    reply, _ = run("ADD", CNI_IFNAME=ifname)
    assert error(reply)["code"] == errors.INVALID_ENV


def test_fifteen_character_interface_name_is_fine():
    reply, _ = run("ADD", CNI_IFNAME="a" * 15)
    assert reply.exit_code == 0


@pytest.mark.parametrize("container_id", ["-abc", "a/b", "a b", "_x"])
def test_bad_container_ids(container_id):
    reply, _ = run("ADD", CNI_CONTAINERID=container_id)
    assert error(reply)["code"] == errors.INVALID_ENV


def test_unknown_and_missing_command():
    assert error(run("FROB")[0])["code"] == errors.INVALID_ENV
    reply, _ = run("ADD", CNI_COMMAND=None)
    assert "CNI_COMMAND is not set" in error(reply)["msg"]


@pytest.mark.parametrize(("stdin", "code"), [(b"{", 6), (b"[]", 6), (b"", 6),
                                             (b'{"name": "n"}', 7)])
def test_undecodable_config(stdin, code):
    assert error(run("ADD", stdin)[0])["code"] == code


def test_unsupported_version_is_code_1_and_error_uses_a_known_version():
    body = error(run("ADD", {**CONF, "cniVersion": "2.0.0"})[0])
    assert body["code"] == errors.INCOMPATIBLE_VERSION
    assert body["cniVersion"] == "1.1.0"


def test_check_needs_0_4_and_gc_status_need_1_1():
    assert error(run("CHECK", {**CONF, "cniVersion": "0.3.1"})[0])["code"] == 1
    assert error(run("GC", {**CONF, "cniVersion": "1.0.0"})[0])["code"] == 1
    assert error(run("STATUS", {**CONF, "cniVersion": "1.0.0"})[0])["code"] == 1
    assert run("GC")[0].exit_code == 0
    assert run("STATUS", CNI_IFNAME=None, CNI_CONTAINERID=None)[0].exit_code == 0


def test_typed_errors_keep_their_code_and_details():
    rec = Recorder(error=errors.TryAgainLater("range full", details="10.0.0.0/30"))
    body = error(run("ADD", recorder=rec)[0])
    assert body == {"cniVersion": "1.1.0", "code": 11, "msg": "range full",
                    "details": "10.0.0.0/30"}


def test_a_bug_is_reported_as_cni_error_not_a_traceback():
    body = error(run("ADD", recorder=Recorder(error=KeyError("boom")))[0])
    assert body["code"] == errors.IO_FAILURE
    assert "KeyError" in body["details"]
    assert body["code"] != 999


def test_cni_args_are_parsed():
    _, rec = run("ADD", CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.0.9")
    assert rec.calls[0].args == {"IgnoreUnknown": "1", "K8S_POD_NAME": "web", "IP": "10.0.0.9"}
    assert error(run("ADD", CNI_ARGS="novalue")[0])["code"] == errors.INVALID_ENV


def test_prev_result_is_read_in_the_config_version():
    prev = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.2/24"}]}
    _, rec = run("DEL", {**CONF, "cniVersion": "0.4.0", "prevResult": prev})
    assert rec.calls[0].prev_result().ips[0].address == "10.0.0.2/24"


def test_entry_path_imports_only_the_standard_library():
    code = ("import sys; import tartan.cni.plugins.bridge, tartan.ipam.plugin; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pyroute2', 'netaddr', 'etcd3', 'scapy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
