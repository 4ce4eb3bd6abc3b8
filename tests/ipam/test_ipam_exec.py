"""tartan-ipam run as a child process, for every command and spec version."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ipam_exec import NETWORK, address, files, ipam, netconf, reservations

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
DUAL = ([{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}])


@pytest.mark.parametrize("version", VERSIONS)
def test_add_result_in_every_version(data_dir, version):
    conf = netconf(data_dir, *DUAL, version=version,
                   routes=[{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.1.0.1"}])
    reply = ipam("ADD", conf, "c1")
    assert reply.code == 0, reply.stdout
    modern = version.startswith("1.")
    family, family6 = ({}, {}) if modern else ({"version": "4"}, {"version": "6"})
    assert reply.json == {
        "cniVersion": version,
        "ips": [
            {**family, "address": "10.1.0.2/24", "gateway": "10.1.0.1"},
            {**family6, "address": "fd00:1::2/64", "gateway": "fd00:1::1"},
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.1.0.1"}],
        "dns": {},
    }
    assert ipam("DEL", conf, "c1").code == 0
    assert files(data_dir) == ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
def test_result_is_the_same_as_host_locals(tmp_path, version):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    extra = {"routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}], "resolvConf": _resolv(tmp_path)}
    mine = ipam("ADD", netconf(ours, *DUAL, version=version, **extra), "c1")
    ref = ipam("ADD", netconf(theirs, *DUAL, version=version, **extra), "c1", plugin="host-local")
    assert ref.code == 0, ref.stdout
    assert mine.json == ref.json
    assert {k: v for k, v in _tree(ours).items() if not k.startswith(".tartan")} == _tree(theirs)


def _resolv(tmp_path) -> str:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 10.0.0.10\ndomain cluster.local\nsearch a b\noptions ndots:5\n")
    return str(path)


def _tree(data_dir) -> dict[str, bytes]:
    root = data_dir / NETWORK
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_resolv_conf_fills_dns(data_dir, tmp_path):
    reply = ipam("ADD", netconf(data_dir, resolvConf=_resolv(tmp_path)), "c1")
    assert reply.json["dns"] == {"nameservers": ["10.0.0.10"], "domain": "cluster.local",
                                 "search": ["a", "b"], "options": ["ndots:5"]}


def test_on_disk_bytes_are_host_locals(data_dir):
    ipam("ADD", netconf(data_dir), "c1")
    assert reservations(data_dir) == {"10.1.0.2": b"c1\r\neth0"}
    assert (data_dir / NETWORK / "last_reserved_ip.0").read_bytes() == b"10.1.0.2"


def test_repeated_add_returns_the_existing_reservation(data_dir):
    conf = netconf(data_dir, *DUAL)
    first = ipam("ADD", conf, "c1")
    again = ipam("ADD", conf, "c1")
    assert again.code == 0 and again.json == first.json
    assert address(ipam("ADD", conf, "c1", "net1")) == "10.1.0.3"
    assert len(reservations(data_dir)) == 4


def test_requested_addresses(data_dir):
    conf = netconf(data_dir, *DUAL)
    reply = ipam("ADD", conf, "c1", cni_args="IgnoreUnknown=1;IP=10.1.0.50,fd00:1::50;K8S_X=y")
    assert [ip["address"] for ip in reply.json["ips"]] == ["10.1.0.50/24", "fd00:1::50/64"]
    runtime = {**conf, "runtimeConfig": {"ips": ["10.1.0.60/24"]}}
    assert address(ipam("ADD", runtime, "c2")) == "10.1.0.60"
    taken = ipam("ADD", runtime, "c3")
    assert taken.error_code == 11
    assert "10.1.0.60 is already reserved by container c2" in taken.json["msg"]
    wrong = ipam("ADD", conf, "c4", cni_args="IP=10.7.0.1")
    assert wrong.error_code == 7 and "not in any range set" in wrong.json["msg"]
    assert ipam("ADD", conf, "c5", cni_args="IP=nonsense").error_code == 4
    assert not any(v.startswith((b"c3", b"c4", b"c5")) for v in reservations(data_dir).values())


def test_exhaustion_is_code_11_and_leaves_nothing_half_made(data_dir):
    conf = netconf(data_dir, [{"subnet": "fd00::/120"}], [{"subnet": "10.1.0.0/29"}])
    for n in range(5):
        assert ipam("ADD", conf, f"c{n}").code == 0
    before = reservations(data_dir)
    reply = ipam("ADD", conf, "c9")
    assert reply.error_code == 11
    assert reply.json["msg"] == (
        "no free address in range set 10.1.0.0/29 (10.1.0.2-10.1.0.6): 5 of 5 reserved"
    )
    assert reservations(data_dir) == before  # the v6 address it took first was given back


BAD = [
    (lambda d: netconf(d, [{"subnet": "10.0.0.0/33"}]), 7,
     'ipam.ranges[0][0].subnet "10.0.0.0/33" is not a valid CIDR'),
    (lambda d: netconf(d, [{"subnet": "10.1.0.0/24", "rangeStart": "10.2.0.1"}]), 7,
     "ipam.ranges[0][0].rangeStart 10.2.0.1 is outside subnet 10.1.0.0/24"),
    (lambda d: netconf(d, [{"subnet": "10.1.0.0/24"}, {"subnet": "10.1.0.0/25"}]), 7, "overlaps"),
    (lambda d: {k: v for k, v in netconf(d).items() if k != "name"}, 7, 'has no "name"'),
    (lambda d: {**netconf(d), "name": "../../etc"}, 7, "is not a valid network name"),
    (lambda d: netconf(d, [{"subnet": 24}]), 6, "must be a string"),
    (lambda d: "{not json", 6, "not valid JSON"),
]


@pytest.mark.parametrize(("make", "code", "words"), BAD)
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "GC", "STATUS"])
def test_bad_config_is_an_error_and_touches_nothing(tmp_path, make, code, words, command):
    data_dir = tmp_path / "data"
    conf = make(data_dir)
    if isinstance(conf, dict):
        conf["cni.dev/valid-attachments"] = []
    reply = ipam(command, conf, "c1")
    assert reply.code == 1 and reply.error_code == code, reply.stdout
    assert words in reply.json["msg"]
    assert not reply.stderr
    assert not data_dir.exists()


def test_add_into_an_unusable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    reply = ipam("ADD", netconf(blocker / "data"), "c1")
    assert reply.error_code == 5 and not reply.stderr
    assert "cannot use data dir" in reply.json["msg"] and "ipam.dataDir" in reply.json["msg"]


def test_del_is_idempotent(data_dir, tmp_path):
    conf = netconf(data_dir)
    ipam("ADD", conf, "c1")
    ipam("ADD", conf, "c1", "net1")
    assert ipam("DEL", conf, "c1").code == 0
    assert [v for v in reservations(data_dir).values()] == [b"c1\r\nnet1"]
    assert ipam("DEL", conf, "c1").code == 0
    assert ipam("DEL", conf, "never-added").code == 0
    absent = tmp_path / "absent"
    assert ipam("DEL", netconf(absent), "c1").code == 0
    assert not absent.exists()


def test_check(data_dir):
    conf = netconf(data_dir, *DUAL, version="1.0.0")
    assert ipam("CHECK", conf, "c1").error_code == 100  # no data dir yet
    added = ipam("ADD", conf, "c1")
    assert ipam("CHECK", conf, "c1").code == 0
    assert ipam("CHECK", {**conf, "prevResult": added.json}, "c1").code == 0
    missing = ipam("CHECK", conf, "c2")
    assert missing.error_code == 100
    assert "container c2 eth0 has no address reserved in network podnet" in missing.json["msg"]
    (data_dir / NETWORK / "fd00:1::2").unlink()
    partial = ipam("CHECK", conf, "c1")
    assert partial.error_code == 100 and "fd00:1::/64" in partial.json["msg"]
    assert "10.1.0.0/24" not in partial.json["msg"]


def test_check_against_prev_result(data_dir):
    conf = netconf(data_dir, version="0.4.0")
    added = ipam("ADD", conf, "c1").json
    added["ips"][0]["address"] = "10.1.0.99/24"
    reply = ipam("CHECK", {**conf, "prevResult": added}, "c1")
    assert reply.error_code == 100 and "10.1.0.99/24 is not reserved" in reply.json["msg"]


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_releases_what_is_not_listed(data_dir, key):
    conf = netconf(data_dir)
    for cid, ifname in [("c1", "eth0"), ("c1", "net1"), ("c2", "eth0"), ("c3", "eth0")]:
        ipam("ADD", conf, cid, ifname)
    keep = [{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c3", "ifname": "eth0"}]
    reply = ipam("GC", {**conf, key: keep})
    assert reply.code == 0 and reply.stdout.strip() == ""
    assert sorted(reservations(data_dir).values()) == [b"c1\r\neth0", b"c3\r\neth0"]
    assert ipam("GC", {**conf, key: []}).code == 0
    assert files(data_dir) == ["last_reserved_ip.0", "lock"]


def test_gc_edge_cases(tmp_path):
    absent = tmp_path / "absent"
    assert ipam("GC", {**netconf(absent), "cni.dev/valid-attachments": []}).code == 0
    assert not absent.exists()
    assert ipam("GC", netconf(absent)).error_code == 7  # no list: refuse to release all
    old = {**netconf(absent, version="1.0.0"), "cni.dev/valid-attachments": []}
    assert ipam("GC", old).error_code == 1  # GC is a 1.1.0 command


def test_status(tmp_path):
    data_dir = tmp_path / "data"
    conf = netconf(data_dir, [{"subnet": "10.1.0.0/30"}])
    assert ipam("STATUS", conf).code == 0
    assert not data_dir.exists()
    ipam("ADD", conf, "c1")
    full = ipam("STATUS", conf)
    assert full.error_code == 50
    assert full.json["msg"] == "no free address in range set 10.1.0.0/30 (10.1.0.2-10.1.0.2): " \
        "1 of 1 reserved"
    blocker = tmp_path / "file"
    blocker.write_text("")
    unwritable = ipam("STATUS", netconf(blocker / "data"))
    assert unwritable.error_code == 50 and "is not a directory" in unwritable.json["msg"]


def test_reboot_sweep_through_the_plugin(data_dir):
    """Reservations whose sidecar names another boot go; host-local's own stay."""
    conf = netconf(data_dir, [{"subnet": "10.1.0.0/29"}])
    root = data_dir / NETWORK
    (root / ".tartan-boot").mkdir(parents=True)
    for n in range(2, 6):
        (root / f"10.1.0.{n}").write_bytes(f"ghost{n}\r\neth0".encode())
        (root / ".tartan-boot" / f"10.1.0.{n}").write_text(f"old-boot\nghost{n}\neth0\n")
    (root / "10.1.0.6").write_bytes(b"hostlocal\r\neth0")  # no sidecar: made by host-local
    (root / "last_reserved_ip.0").write_text("10.1.0.6")
    assert ipam("STATUS", conf).code == 0  # full on disk, but ADD would sweep first
    assert address(ipam("ADD", conf, "new")) == "10.1.0.2"
    assert reservations(data_dir) == {"10.1.0.2": b"new\r\neth0", "10.1.0.6": b"hostlocal\r\neth0"}
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert files(data_dir) == [".tartan-boot", ".tartan-boot/10.1.0.2", "10.1.0.2", "10.1.0.6",
                               "last_reserved_ip.0", "lock"]
    assert (root / ".tartan-boot" / "10.1.0.2").read_text() == f"{boot}\nnew\neth0\n"


def test_entry_path_stays_on_the_standard_library():
    code = (
        "import sys; from tartan.cni import skel; from tartan.ipam.plugin import PLUGIN;"
        "skel.run(PLUGIN, {'CNI_COMMAND': 'VERSION'}, b'');"
        "print(sorted(m for m in sys.modules if m.startswith('tartan.ipam.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == ["tartan.ipam.plugin"]
