"""`tartanctl pod`'s CNI side without a kernel: names, and the conflist run as libcni runs it
(each plugin's result handed to the next as prevResult, DEL in reverse order, the first
plugin found along the bin path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tartan.debug import pods

RECORDER = """#!/bin/sh
# a CNI plugin that records what it was given and answers with a result naming itself
cat > "$(dirname "$0")/../seen-$CNI_COMMAND-$(basename "$0").json"
echo "$CNI_ARGS" > "$(dirname "$0")/../args-$(basename "$0")"
echo "$CNI_COMMAND $(basename "$0")" >> "$(dirname "$0")/../order"
printf '{"cniVersion":"1.0.0","ips":[{"address":"10.244.1.%s/24"}]}' "$NUMBER"
"""


def plugin(folder: Path, name: str, number: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(RECORDER.replace("$NUMBER", str(number)))
    path.chmod(0o755)


def test_pod_names_are_namespace_and_name_each_a_dns_label():
    assert pods.parse_key("shop/web") == ("shop", "web")
    assert pods.parse_key("web") == ("default", "web")
    for bad in ("Shop/web", "a/b/c", "x/", "x/-web"):
        with pytest.raises(pods.PodError, match="a pod is NS/NAME"):
            pods.parse_key(bad)


def test_the_conflist_runs_in_order_with_prev_result_and_del_in_reverse(tmp_path: Path):
    plugin(tmp_path / "first", "tartan", 2)
    plugin(tmp_path / "second", "portmap", 9)
    doc = {"cniVersion": "1.0.0", "name": "tartan",
           "plugins": [{"type": "tartan"}, {"type": "portmap", "capabilities": {"x": True}}]}
    pod = pods.NodePod("shop", "web", "/run/netns/shop-web", "c0ffee")
    bins = f"{tmp_path / 'first'}:{tmp_path / 'second'}"
    result = pods.run_plugins(pod, doc, "ADD", bins)
    assert result["ips"][0]["address"] == "10.244.1.9/24"  # the last plugin's
    given = json.loads((tmp_path / "seen-ADD-portmap.json").read_text())
    assert given["prevResult"]["ips"][0]["address"] == "10.244.1.2/24"
    assert given["name"] == "tartan" and given["capabilities"] == {"x": True}
    assert "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web" in (tmp_path / "args-tartan").read_text()
    pods.run_plugins(pod, doc, "DEL", bins)
    assert (tmp_path / "order").read_text().splitlines() == [
        "ADD tartan", "ADD portmap", "DEL portmap", "DEL tartan"]
    with pytest.raises(pods.PodError, match="plugin 'bridge' not found in"):
        pods.run_plugins(pod, {**doc, "plugins": [{"type": "bridge"}]}, "ADD", bins)


def test_a_broken_network_config_is_one_clear_error(tmp_path: Path):
    conf = tmp_path / "10-tartan.conflist"
    conf.write_text("{not json")  # not Tartan's as far as a runtime can tell
    with pytest.raises(pods.PodError, match=r"^no Tartan network config in "):
        pods.conflist(str(tmp_path))
    conf.write_text('{"cniVersion": "1.0.0", "name": "tartan", "plugins": [{"type": "tartan"},'
                    ' 5]}')
    with pytest.raises(pods.PodError, match=r"10-tartan.conflist is not a network config: it "
                                            r"needs cniVersion, name and a list of plugins$"):
        pods.conflist(str(tmp_path))
