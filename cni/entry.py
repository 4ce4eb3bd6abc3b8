"""The console scripts `tartan`, `tartan-bridge`, `tartan-ipam` and `tartan-portmap`
(pyproject.toml).

Each hands its request to tartand's socket (tartan.cni.fastpath) and, when no agent takes
it, runs the plugin in this process on the dispatcher the agent uses. The dispatcher and the
plugin are imported only then: a request the agent serves, and every VERSION, run on the
standard library alone.
"""

from __future__ import annotations

import os

from tartan.cni import fastpath, registry


def in_process(plugin: str, stdin: bytes) -> int:
    """The fallback: the plugin in this process, on the same dispatcher the agent uses. The
    node plugin (`tartan`, which runs only where tartand does) leaves a kubelet pod's ADD or
    DEL in the journal for the agent to record; tartan-bridge used on its own does not."""
    from tartan.cni import journal, skel

    reply = skel.run(registry.load(plugin), os.environ, stdin)
    if plugin == registry.NODE_PLUGIN:
        journal.note(os.environ.get("CNI_COMMAND", ""), os.environ, reply.exit_code,
                     reply.stdout, journal.plugin_dir(os.environ))
    return skel.emit(reply)


def in_process_main(plugin: str) -> int:
    """`in_process` with this process's stdin (the bundle's full executable)."""
    return in_process(plugin, fastpath.read_stdin())


def run_plugin(name: str) -> int:
    """Plugin `name`: agent first, in-process when it is not there."""
    return fastpath.relay(name, lambda stdin: in_process(name, stdin))


def bridge() -> int:
    return run_plugin("tartan-bridge")


def ipam() -> int:
    return run_plugin("tartan-ipam")


def meta() -> int:
    return run_plugin("tartan")


def portmap() -> int:
    return run_plugin("tartan-portmap")
