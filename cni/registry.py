"""Tartan's CNI plugins, listed once: every place that names them reads this table.

The executables' entry points, the agent's socket server, delegation, the bundle and its
installer, and the lab all take the plugin names from here. Each name maps to the module whose
`PLUGIN` (a `tartan.cni.skel.Plugin`) serves it. The modules are named, not imported: this
file is on the plugins' entry path and the installer reads it from the source tree, so it
imports nothing at all; `load` imports a plugin where one is run.
"""

TYPE_CHECKING = False  # `typing` is not on the entry path; mypy reads this name as it would
if TYPE_CHECKING:
    from tartan.cni.skel import Plugin

# name -> module holding its PLUGIN. tartan-ipam lives with the allocator in ipam/, which
# sits above cni/ (it uses the dispatcher and the result types): this late binding is the one
# place cni/ reaches up into it.
PLUGINS = {
    "tartan": "tartan.cni.plugins.meta",
    "tartan-bridge": "tartan.cni.plugins.bridge",
    "tartan-ipam": "tartan.ipam.plugin",
    "tartan-portmap": "tartan.cni.plugins.portmap",
}
NAMES = tuple(PLUGINS)
NODE_PLUGIN = "tartan"  # the one runtimes call on a Tartan node; it delegates to the others


def module_of(name: str) -> str:
    """The module serving plugin `name`; KeyError naming the known plugins otherwise."""
    try:
        return PLUGINS[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a Tartan plugin; use one of {', '.join(NAMES)}") \
            from None


def load(name: str) -> "Plugin":
    """The plugin itself: its module is imported on first use."""
    import importlib

    return importlib.import_module(module_of(name)).PLUGIN
