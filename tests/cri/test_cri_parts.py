"""The CRI test kit's own parts, without root or containerd: the .proto reader against
upstream's field numbers, and the pause image archive."""

from __future__ import annotations

import io
import json
import tarfile

import cri_proto
import pause_image
import pytest
from google.protobuf import json_format

# (message, field) -> number, as k8s.io/cri-api's runtime/v1/api.proto has them.
UPSTREAM = {
    ("PortMapping", "host_port"): 3, ("PortMapping", "host_ip"): 4,
    ("NamespaceOption", "ipc"): 3, ("LinuxSandboxSecurityContext", "run_as_group"): 8,
    ("LinuxPodSandboxConfig", "security_context"): 2, ("PodSandboxConfig", "linux"): 8,
    ("PodSandboxConfig", "port_mappings"): 5, ("RunPodSandboxRequest", "runtime_handler"): 2,
    ("PodSandboxStatus", "network"): 5, ("PodSandboxStatusResponse", "info"): 2,
    ("PodSandbox", "runtime_handler"): 7, ("ImageSpec", "annotations"): 2,
}


@pytest.fixture(scope="module")
def api() -> cri_proto.Api:
    return cri_proto.load()


def test_field_numbers_are_upstreams(api):
    numbers = {key: api.messages[key[0]].DESCRIPTOR.fields_by_name[key[1]].number
               for key in UPSTREAM}
    assert numbers == UPSTREAM


def test_a_sandbox_config_goes_through_the_wire_format_unchanged(api):
    request = {"config": {"metadata": {"name": "p", "uid": "u", "namespace": "n"},
                          "port_mappings": [{"protocol": "UDP", "container_port": 53,
                                             "host_port": 30053}],
                          "labels": {"app": "web"},
                          "linux": {"security_context": {"namespace_options": {
                              "pid": "CONTAINER"}}}},
               "runtime_handler": "reference"}
    cls = api.messages["RunPodSandboxRequest"]
    wire = json_format.ParseDict(request, cls()).SerializeToString()
    back = json_format.MessageToDict(cls.FromString(wire), preserving_proto_field_name=True)
    assert back == request


def test_the_services_name_their_methods_as_grpc_does(api):
    assert api.package == "runtime.v1"
    assert api.methods["RunPodSandbox"] == ("RuntimeService", "RunPodSandboxRequest",
                                            "RunPodSandboxResponse")
    assert api.methods["ImageStatus"][0] == "ImageService"


def test_a_proto_outside_the_subset_is_refused():
    with pytest.raises(cri_proto.ProtoSyntaxError, match="proto3"):
        cri_proto.parse('syntax = "proto2";')
    with pytest.raises(cri_proto.ProtoSyntaxError, match="unknown type"):
        cri_proto.descriptor(cri_proto.parse("package p; message M { Missing m = 1; }"), "x")


@pytest.mark.skipif(pause_image.BUSYBOX is None, reason="busybox-static not installed")
def test_the_pause_image_archive_is_the_same_bytes_every_time(tmp_path):
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    digest = pause_image.write_archive(first, "localhost/tartan/pause:cri")
    assert pause_image.write_archive(second, "localhost/tartan/pause:cri") == digest
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        index = json.load(tar.extractfile("index.json"))
        manifest = index["manifests"][0]
        assert manifest["digest"] == digest
        assert manifest["annotations"]["io.containerd.image.name"] == \
            "localhost/tartan/pause:cri"
        body = json.load(tar.extractfile(f"blobs/sha256/{digest.split(':')[1]}"))
        config = json.load(tar.extractfile(
            f"blobs/sha256/{body['config']['digest'].split(':')[1]}"))
        layer = tar.extractfile(f"blobs/sha256/{body['layers'][0]['digest'].split(':')[1]}")
        with tarfile.open(fileobj=io.BytesIO(layer.read())) as inner:
            names = inner.getnames()
    assert config["config"]["Entrypoint"] == pause_image.ENTRYPOINT
    assert "bin/busybox" in names
