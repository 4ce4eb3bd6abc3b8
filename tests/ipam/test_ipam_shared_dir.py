"""Many processes, and the reference host-local, on one data dir."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ipam_exec import NETWORK, address, files, ipam, netconf, reservations

PROCESSES = 64


def test_concurrent_adds_get_distinct_addresses_and_dels_release_them(data_dir):
    conf = netconf(data_dir)
    ids = [f"pod{n:02d}" for n in range(PROCESSES)]
    with ThreadPoolExecutor(max_workers=PROCESSES) as pool:
        added = list(pool.map(lambda cid: ipam("ADD", conf, cid), ids))
    addresses = [address(reply) for reply in added]
    assert len(set(addresses)) == PROCESSES
    held = reservations(data_dir)
    assert sorted(held) == sorted(addresses)
    assert {held[a] for a in addresses} == {f"{cid}\r\neth0".encode() for cid in ids}
    with ThreadPoolExecutor(max_workers=PROCESSES) as pool:
        deleted = list(pool.map(lambda cid: ipam("DEL", conf, cid), ids))
    assert all(reply.code == 0 for reply in deleted), [r.stdout for r in deleted if r.code]
    assert files(data_dir) == ["last_reserved_ip.0", "lock"]


def _plugin(n: int) -> str:
    return "tartan-ipam" if n % 2 == 0 else "host-local"


def test_interleaved_with_host_local(data_dir):
    # host-local v1.1.1 speaks up to 1.0.0.
    conf = netconf(data_dir, [{"subnet": "10.1.0.0/28"}], [{"subnet": "fd00::/124"}],
                   version="1.0.0")
    got = [ipam("ADD", conf, f"c{n}", plugin=_plugin(n)) for n in range(10)]
    v4 = [address(reply) for reply in got]
    v6 = [address(reply, 1) for reply in got]
    # One shared round robin (last_reserved_ip.N): consecutive, never the same address.
    assert v4 == [f"10.1.0.{n}" for n in range(2, 12)]
    assert v6 == [f"fd00::{n:x}" for n in range(2, 12)]
    # Each DELs the other's reservations, by container id and ifname.
    for n in range(10):
        reply = ipam("DEL", conf, f"c{n}", plugin=_plugin(n + 1))
        assert reply.code == 0, reply.stdout
    assert reservations(data_dir) == {}
    # host-local leaves Tartan's boot sidecars behind; Tartan's next ADD or GC clears them.
    assert any(name.startswith(".tartan-boot/") for name in files(data_dir))
    assert ipam("ADD", conf, "after", plugin="tartan-ipam").code == 0
    assert ipam("DEL", conf, "after", plugin="host-local").code == 0
    gc = {**conf, "cniVersion": "1.1.0", "cni.dev/valid-attachments": []}
    assert ipam("GC", gc).code == 0
    assert files(data_dir) == ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]


def test_host_local_and_tartan_fill_one_range_together(data_dir):
    conf = netconf(data_dir, [{"subnet": "10.1.0.0/29"}], version="1.0.0")
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda n: ipam("ADD", conf, f"c{n}", plugin=_plugin(n)),
                                range(7)))
    ok = [address(r) for r in replies if r.code == 0]
    assert sorted(ok) == [f"10.1.0.{n}" for n in range(2, 7)]  # 5 addresses, none twice
    failed = [r for r in replies if r.code != 0]
    assert len(failed) == 2
    assert all("10.1.0.0/29" in r.json["msg"] for r in failed)


def test_host_local_check_and_del_see_tartans_reservation(data_dir):
    conf = netconf(data_dir, version="1.0.0")
    assert address(ipam("ADD", conf, "c1")) == "10.1.0.2"
    assert ipam("CHECK", conf, "c1", plugin="host-local").code == 0
    # host-local v1.1.1 refuses a second ADD for the same container and ifname.
    assert ipam("ADD", conf, "c1", plugin="host-local").code != 0
    assert address(ipam("ADD", conf, "c2", plugin="host-local")) == "10.1.0.3"
    assert ipam("CHECK", conf, "c2").code == 0
    assert ipam("DEL", conf, "c1", plugin="host-local").code == 0
    assert list(reservations(data_dir)) == ["10.1.0.3"]
    assert (data_dir / NETWORK / ".tartan-boot" / "10.1.0.2").exists()  # orphan, harmless
    assert address(ipam("ADD", conf, "c3", plugin="host-local")) == "10.1.0.4"
