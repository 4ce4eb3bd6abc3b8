"""The bundle's CNI executable: `tartan`, `tartan-bridge` and `tartan-ipam` in /opt/cni/bin
are symlinks to it. It carries only the standard library modules the socket path needs:
VERSION is answered here, everything else goes to tartand's socket, and when no agent
answers, this process becomes `tartan-full` (beside it, same bundle) by exec."""

import os
import sys

from tartan.cni.fastpath import bundle_main

# PyInstaller's bootloader restarts a onedir program once with its own library folder in
# LD_LIBRARY_PATH; the exec into tartan-full must get the caller's environment back.
_orig = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
if _orig is None:
    os.environ.pop("LD_LIBRARY_PATH", None)
else:
    os.environ["LD_LIBRARY_PATH"] = _orig

code = bundle_main(os.path.join(os.path.dirname(sys.executable), "tartan-full"))
# The answer is out; tearing the interpreter down (a garbage collection, freeing every module)
# would add 2-3 ms to every plugin call for nothing.
sys.stdout.flush()
os._exit(code)
