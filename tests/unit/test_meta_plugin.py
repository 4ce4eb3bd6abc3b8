"""The meta plugin's record keeping and command flow, with a recording stand-in for the
delegate (no root, no kernel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tartan.cni import errors, invoke, skel
from tartan.cni.plugins import meta
from tartan.cni.plugins.meta import DelegateStore
from tartan.cni.types import IPConfig, Result

SUBNET = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n" \
         "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"


@dataclass
class Call:
    command: str
    plugin_type: str
    config: dict


@dataclass
class FakeDelegate:
    calls: list[Call] = field(default_factory=list)
    fail: errors.CniError | None = None

    def __call__(self, command, plugin_type, stdin, env, paths):
        self.calls.append(Call(command, plugin_type, json.loads(stdin)))
        if self.fail:
            raise self.fail
        if command == "ADD":
            return Result(ips=[IPConfig("10.244.3.2/24", "10.244.3.1")])
        return None


@pytest.fixture
def fake(monkeypatch) -> FakeDelegate:
    recorder = FakeDelegate()
    monkeypatch.setattr(invoke, "delegate", recorder)
    return recorder


@pytest.fixture
def node(tmp_path) -> dict:
    subnet = tmp_path / "subnet.env"
    subnet.write_text(SUBNET)
    return {"cniVersion": "1.1.0", "name": "cbr0", "type": "tartan",
            "subnetFile": str(subnet), "dataDir": str(tmp_path / "tartan")}


def run(command: str, conf: dict, container_id: str = "ctr1") -> skel.Reply:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": "/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    return skel.run(meta.PLUGIN, env, json.dumps(conf).encode())


def stored(conf: dict, container_id: str = "ctr1") -> Path:
    return Path(conf["dataDir"]) / container_id


def stat_mode(path: str) -> int:
    return os.stat(path).st_mode & 0o777


def test_add_stores_then_delegates_and_returns_the_result(fake, node):
    reply = run("ADD", node)
    assert reply.exit_code == 0, reply.stdout
    assert json.loads(reply.stdout)["ips"][0]["address"] == "10.244.3.2/24"
    (call,) = fake.calls
    assert call.command == "ADD" and call.plugin_type == "tartan-bridge"
    assert json.loads(stored(node).read_text()) == call.config
    assert os.listdir(node["dataDir"]) == ["ctr1"]
    assert stat_mode(node["dataDir"]) == 0o700


def test_add_result_is_in_the_config_version(fake, node):
    reply = run("ADD", {**node, "cniVersion": "0.3.1"})
    body = json.loads(reply.stdout)
    assert body["cniVersion"] == "0.3.1" and body["ips"][0]["version"] == "4"


def test_failed_delegate_add_leaves_no_record(fake, node):
    fake.fail = errors.KernelFailure("no bridge for you")
    reply = run("ADD", node)
    assert json.loads(reply.stdout)["code"] == errors.KERNEL_FAILURE
    assert os.listdir(node["dataDir"]) == []


def test_add_without_subnet_file_is_try_again_later_and_stores_nothing(fake, node):
    os.unlink(node["subnetFile"])
    body = json.loads(run("ADD", node).stdout)
    assert body["code"] == 11
    assert body["msg"] == (f"subnet file {node['subnetFile']} does not exist: "
                           "is tartand running on this node?")
    assert fake.calls == [] and not os.path.exists(node["dataDir"])


def test_del_uses_the_stored_config_even_after_the_subnet_changed(fake, node):
    run("ADD", node)
    Path(node["subnetFile"]).write_text(SUBNET.replace("10.244.3.1", "10.244.9.1"))
    assert run("DEL", node).exit_code == 0
    config = fake.calls[-1].config
    assert config["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24"}]]
    assert not stored(node).exists()


def test_failed_delegate_del_keeps_the_record_for_the_retry(fake, node):
    run("ADD", node)
    fake.fail = errors.IOFailure("busy")
    assert run("DEL", node).exit_code == 1
    assert stored(node).exists()


@pytest.mark.parametrize("content", [None, "", '{"type": "tartan-bri', "[]", '{"name": "x"}'])
def test_del_with_missing_or_corrupt_record_rebuilds_from_the_subnet_file(fake, node, content):
    os.makedirs(node["dataDir"])
    if content is not None:
        stored(node).write_text(content)
    assert run("DEL", node).exit_code == 0
    (call,) = fake.calls
    assert call.command == "DEL" and call.config["ipam"]["ranges"] == [[{"subnet":
                                                                          "10.244.3.0/24"}]]
    assert not stored(node).exists()


def test_del_with_neither_record_nor_subnet_file_succeeds(fake, node):
    os.unlink(node["subnetFile"])
    assert run("DEL", node).exit_code == 0
    assert fake.calls == []


def test_del_and_check_use_this_calls_version_and_extras(fake, node):
    run("ADD", {**node, "cniVersion": "0.4.0"})
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.244.3.2/24"}]}
    conf = {**node, "cniVersion": "1.0.0", "prevResult": prev,
            "runtimeConfig": {"portMappings": []}}
    assert run("CHECK", conf).exit_code == 0
    assert run("DEL", conf).exit_code == 0
    for call in fake.calls[1:]:
        assert call.config["cniVersion"] == "1.0.0"
        assert call.config["prevResult"] == prev
        assert call.config["runtimeConfig"] == {"portMappings": []}


def test_check_needs_prev_result(fake, node):
    assert json.loads(run("CHECK", node).stdout)["code"] == errors.INVALID_CONFIG


def test_gc_delegates_and_removes_records_of_gone_containers(fake, node):
    for cid in ("keep", "drop"):
        run("ADD", node, cid)
    other = {**node, "name": "other"}
    run("ADD", other, "others")
    stored(node, "junk").write_text("{")
    conf = {**node, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    assert run("GC", conf, "").exit_code == 0
    assert fake.calls[-1].command == "GC"
    assert fake.calls[-1].config["cni.dev/valid-attachments"] == conf["cni.dev/valid-attachments"]
    assert sorted(os.listdir(node["dataDir"])) == ["keep", "others"]


def test_gc_without_attachments_is_invalid_config(fake, node):
    assert json.loads(run("GC", node, "").stdout)["code"] == errors.INVALID_CONFIG


def test_status(fake, node):
    assert run("STATUS", node, "").exit_code == 0
    assert fake.calls[-1].command == "STATUS"
    os.unlink(node["subnetFile"])
    body = json.loads(run("STATUS", node, "").stdout)
    assert body["code"] == 50 and "is tartand running?" in body["msg"]
    Path(node["subnetFile"]).write_text("FLANNEL_MTU=x\n")
    assert json.loads(run("STATUS", node, "").stdout)["code"] == 50


def test_store_replaces_atomically_and_leaves_no_temp_file(tmp_path):
    store = DelegateStore(str(tmp_path / "d"))
    store.save("c1", {"type": "tartan-bridge", "name": "n", "v": 1})
    store.save("c1", {"type": "tartan-bridge", "name": "n", "v": 2})
    assert store.load("c1")["v"] == 2
    assert os.listdir(store.directory) == ["c1"]
    assert stat_mode(store.path("c1")) == 0o600


def test_store_ignores_temp_files_when_listing(tmp_path):
    store = DelegateStore(str(tmp_path))
    (tmp_path / ".c1.abc.tmp").write_text("{")
    store.save("c2", {"type": "t", "name": "n"})
    assert store.container_ids() == ["c2"]


def test_entry_path_stays_on_the_standard_library():
    code = ("import sys; from tartan.cni.plugins import meta; "
            "print(' '.join(m for m in sys.modules if m.startswith(('tartan', 'pyroute2'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    allowed = {"tartan", "tartan.cni", "tartan.cni.skel", "tartan.cni.errors", "tartan.cni.types",
               "tartan.cni.versions", "tartan.cni.invoke", "tartan.cni.plugins",
               "tartan.cni.plugins.meta", "tartan.cni.plugins.meta_config",
               "tartan.cni.registry", "tartan.cni.subnet_env", "tartan.kernel",
               "tartan.kernel.errors", "tartan.kernel.files"}
    assert set(out) <= allowed, set(out) - allowed
