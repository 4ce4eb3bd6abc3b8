"""Lease attributes in flannel's JSON form, subnet keys, peers and store URLs."""

from __future__ import annotations

import json

import pytest
from lease_kit import attrs, net

from tartan.ipam.lease import (
    Lease,
    LeaseAttrs,
    open_store,
    parse_subnet_key,
    peers,
    subnet_key,
)
from tartan.ipam.lease_memory import MemoryLeaseStore


def test_vxlan_attrs_in_flannel_json():
    text = attrs("10.0.0.5", mac="aa:bb:cc:dd:ee:ff").to_json()
    assert text == ('{"PublicIP":"10.0.0.5","BackendType":"vxlan",'
                    '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}')
    assert LeaseAttrs.from_json(text) == attrs("10.0.0.5", mac="aa:bb:cc:dd:ee:ff")


def test_empty_fields_are_omitted_as_flannel_omits_them():
    assert json.loads(LeaseAttrs("10.0.0.5", "host-gw").to_json()) == {
        "PublicIP": "10.0.0.5", "BackendType": "host-gw"}


def test_attrs_keys_match_case_insensitively_and_extra_fields_are_ignored():
    parsed = LeaseAttrs.from_json(b'{"publicip":"10.0.0.5","backendType":"host-gw",'
                                  b'"BackendData":null,"PublicIPv6":null}')
    assert parsed == LeaseAttrs("10.0.0.5", "host-gw", {})


@pytest.mark.parametrize("text", ['{"PublicIP":"fd00::1"}', '{"PublicIP":7}', "{}", "[]",
                                  '{"PublicIP":"10.0.0.5","BackendData":[1]}', "nope"])
def test_unusable_attrs(text: str):
    with pytest.raises(ValueError):
        LeaseAttrs.from_json(text)


def test_subnet_keys():
    assert subnet_key(net("10.244.1.0/24")) == "10.244.1.0-24"
    assert parse_subnet_key("10.244.1.0-24") == net("10.244.1.0/24")
    for bad in ("10.244.1.0/24", "10.244.1.1-24", "x-24", "10.244.1.0-", ""):
        assert parse_subnet_key(bad) is None


def test_peers_are_the_other_leases_in_subnet_order():
    leases = [Lease(net(s), attrs(), 0.0, 1) for s in
              ("10.244.9.0/24", "10.244.1.0/24", "10.244.10.0/24")]
    assert [p.subnet for p in peers(leases, net("10.244.1.0/24"))] == [
        net("10.244.9.0/24"), net("10.244.10.0/24")]
    assert len(peers(leases, None)) == 3


def test_store_urls(tmp_path):
    assert isinstance(open_store("memory:"), MemoryLeaseStore)
    etcd = open_store("http://127.0.0.1:1,http://127.0.0.1:2", prefix="/x/")  # no I/O yet
    assert (etcd.urls, etcd.prefix) == (["http://127.0.0.1:1", "http://127.0.0.1:2"], "/x")
    assert etcd.config_key == "/x/config" and etcd.subnets_prefix == "/x/subnets/"
    etcd.close()
    with pytest.raises(ValueError, match="use sqlite:/path/to/leases.db or http://host:2379"):
        open_store("/var/lib/tartan/leases.db")
