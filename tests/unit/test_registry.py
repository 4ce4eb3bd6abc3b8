"""The plugin registry is the one list of Tartan's CNI plugins: each name serves a plugin of
that name, and the executables, the installer's links and the agent's server all take their
names from it."""

import importlib.util
import socket
import sys
import tomllib
from pathlib import Path

import pytest

from tartan.cni import registry, server

REPO = Path(__file__).resolve().parents[2]


def _installer():
    spec = importlib.util.spec_from_file_location("tartan_install", REPO / "packaging/install.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", registry.NAMES)
def test_each_name_loads_the_plugin_of_that_name(name):
    plugin = registry.load(name)
    assert plugin.name == name
    assert sys.modules[registry.module_of(name)].PLUGIN is plugin


def test_an_unknown_name_is_refused_naming_the_known_ones():
    with pytest.raises(KeyError) as caught:
        registry.module_of("tartan-nonesuch")
    message = str(caught.value)
    assert "'tartan-nonesuch' is not a Tartan plugin" in message
    for name in registry.NAMES:
        assert name in message


def test_every_plugin_has_a_console_script():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name in registry.NAMES:
        assert name in scripts, f"pyproject.toml has no script for {name}"
        assert scripts[name].startswith("tartan.cni.entry:")


def test_the_installer_links_every_plugin_name_to_the_cni_executable():
    install = _installer()
    cni_links = {Path(link).name for link, target in install.LINKS.items()
                 if target.endswith("/" + install.CNI_EXE)}
    assert cni_links == set(registry.NAMES)


def test_the_node_plugin_is_registered():
    assert registry.NODE_PLUGIN in registry.PLUGINS


def _request(plugin: str) -> bytes:
    return server.MAGIC + b"".join(server.frame(part) for part in (plugin.encode(), b"", b"{}"))


@pytest.mark.parametrize("name", registry.NAMES)
def test_the_agent_takes_requests_for_every_registered_plugin(name):
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(_request(name))
        assert server.read_request(ours).plugin == name


def test_the_agent_refuses_a_plugin_the_registry_does_not_name():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(_request("portmap"))
        with pytest.raises(server.BadRequest, match="unknown plugin 'portmap'"):
            server.read_request(ours)
