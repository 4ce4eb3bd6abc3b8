"""Which modules the bundle's small CNI executable (tartan-cni) may carry and import.

Read by tartan.spec (to build it) and by tests/packaging (to prove that the socket path
runs with nothing else).
"""

# What the socket path imports at run time, beyond the interpreter's own start-up modules.
RUNTIME = frozenset({
    "_socket", "struct",
    "tartan", "tartan.cni", "tartan.cni.fastpath", "tartan.cni.registry", "tartan.cni.versions",
})

# The interpreter's and PyInstaller's start-up modules (PyInstaller's base-library set and
# what those import), by top-level name; `linecache` needs token/tokenize for a traceback.
BASE = frozenset({
    "_collections_abc", "_weakrefset", "abc", "codecs", "collections", "copyreg", "encodings",
    "enum", "functools", "genericpath", "heapq", "io", "keyword", "linecache", "locale",
    "ntpath", "operator", "os", "posixpath", "re", "reprlib", "sre_compile", "sre_constants",
    "sre_parse", "stat", "token", "tokenize", "traceback", "types", "warnings", "weakref",
})

# Where the import graph is cut: the in-process fallback (skel and what it imports; the
# small executable execs tartan-full instead), and stdlib modules reachable only through
# lazy imports the socket path never takes (os.popen -> subprocess, ...). Excluding
# `inspect` also drops PyInstaller's pyi_rth_inspect hook, which imports inspect and zipfile
# at every start.
EXCLUDES = (
    "tartan.cni.skel", "tartan.cni.types", "tartan.cni.errors",
    "_compat_pickle", "_compression", "_py_abc", "_pydecimal", "_strptime", "_threading_local",
    "argparse", "ast", "base64", "bisect", "bz2", "calendar", "contextlib", "contextvars",
    "copy", "csv", "ctypes", "dataclasses", "datetime", "decimal", "dis", "email", "fnmatch",
    "fractions", "getopt", "gettext", "gzip", "hashlib", "importlib", "inspect", "ipaddress",
    "json", "logging", "lzma", "multiprocessing", "numbers", "opcode", "pathlib", "pickle",
    "pkgutil", "pprint", "py_compile", "quopri", "random", "shutil", "signal", "statistics",
    "string", "stringprep", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "tracemalloc", "typing", "urllib", "zipfile",
)


def allowed(module: str) -> bool:
    return module in RUNTIME or module.split(".")[0] in BASE
