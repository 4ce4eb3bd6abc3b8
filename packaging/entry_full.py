"""tartan-full: every Tartan executable in one program; the role is the name it is called by
(busybox style). The CNI names run the plugin in this process, with no socket: this is what
the small CNI executable execs into when no agent answers."""

import importlib
import os
import sys

from tartan.cni import registry

COMMANDS = {
    "tartand": "tartan.backends.agent",
    "tartanctl": "tartan.debug.ctl",
}


def restore_library_path() -> None:
    """Give child programs (iptables-restore, ip, ...) the caller's LD_LIBRARY_PATH, not the
    bundle's library folder that PyInstaller's bootloader put in front of it."""
    orig = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if orig is None:
        os.environ.pop("LD_LIBRARY_PATH", None)
    else:
        os.environ["LD_LIBRARY_PATH"] = orig


def main() -> int:
    role = os.path.basename(sys.argv[0])
    restore_library_path()
    if role in registry.PLUGINS:
        from tartan.cni import entry

        return entry.in_process_main(role)
    if role in COMMANDS:
        return importlib.import_module(COMMANDS[role]).main()
    names = ", ".join([*registry.NAMES, *COMMANDS])
    sys.stderr.write(f"tartan: called as {role!r}; link me as one of {names}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
