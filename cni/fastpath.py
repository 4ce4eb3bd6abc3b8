"""The fast path: hand the CNI request to the warm agent over its unix socket.

A plugin process pays for its interpreter and, in-process, for pyroute2's import before it
does any work. tartand already has both loaded, so the plugin first sends it the request
(which plugin, the environment, stdin) and relays the answer byte for byte, JSON unparsed.
When no agent answers (no socket, refused, or no reply in time), the plugin does the same
work in-process with the same code (tartan.cni.entry), or the bundle's small executable execs
the full one.

Wire format (all lengths are 4-byte big-endian):
    request:  b"TCNI1" | len+plugin name | len+environment ("K=V\\0" each) | len+stdin
    reply:    b"TCNI1" | exit code (4 bytes, signed) | len+stdout

The environment carries the caller's network and mount namespace identities: the agent
declines (exit code DECLINED) a caller that is not in its own namespaces, since the request
would otherwise act on the agent's namespaces, and the plugin then works in-process.

Only the standard library is imported here, and only what the socket path needs (an import
contract in pyproject.toml holds this module, the registry and the versions to it).
"""

# No `from __future__ import annotations` (importing __future__ is 0.3 ms of every start):
# the annotations that name typing-only types are strings.
# The C module itself: `socket` would also import enum & co., 5.6 ms of every plugin start.
import _socket as socket
import os
import struct
import sys

from tartan.cni import registry

TYPE_CHECKING = False  # `typing` and `collections` cost milliseconds at every plugin start
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

MAGIC = b"TCNI1"
SOCKET_PATH = "/run/tartan/cni.sock"
CONNECT_TIMEOUT = 0.5
REPLY_TIMEOUT = 120.0  # the agent answers every request it accepted; this only bounds a hang
MAX_FRAME = 4 << 20
DECLINED = -2
CALLER_NS = "TARTAN_CALLER_NS"


def namespace_identity() -> str:
    """Which network and mount namespace this process is in (device:inode of each)."""
    parts = []
    for kind in ("net", "mnt"):
        st = os.stat(f"/proc/self/ns/{kind}")
        parts.append(f"{st.st_dev}:{st.st_ino}")
    return ",".join(parts)


def socket_path() -> str:
    return os.environ.get("TARTAN_CNI_SOCKET", SOCKET_PATH)


def frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def encode_env(env: "Mapping[str, str]") -> bytes:
    items = [f"{k}={v}" for k, v in env.items() if k.startswith("CNI_")
             or k in ("PATH", "TARTAN_DEBUG")]
    items.append(f"{CALLER_NS}={namespace_identity()}")
    return "\0".join(items).encode()


def encode_request(plugin: str, env: "Mapping[str, str]", stdin: bytes) -> bytes:
    return MAGIC + frame(plugin.encode()) + frame(encode_env(env)) + frame(stdin)


def read_exact(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 16))
        if not chunk:
            raise ConnectionError("agent closed the connection mid-reply")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_reply(sock: socket.socket) -> tuple[int, bytes]:
    head = read_exact(sock, len(MAGIC) + 8)
    if head[: len(MAGIC)] != MAGIC:
        raise ConnectionError("not a Tartan agent on the other end")
    code, size = struct.unpack(">iI", head[len(MAGIC):])
    if size > MAX_FRAME:
        raise ConnectionError("reply too large")
    return code, read_exact(sock, size)


def ask_agent(plugin: str, env: "Mapping[str, str]", stdin: bytes,
              path: str | None = None) -> tuple[int, bytes] | None:
    """The agent's (exit code, stdout), or None when no agent took the request."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(path or socket_path())
        sock.sendall(encode_request(plugin, env, stdin))
    except OSError:
        sock.close()
        return None  # nobody listening: do it ourselves
    try:
        sock.settimeout(REPLY_TIMEOUT)
        code, out = read_reply(sock)
    except (OSError, ConnectionError):
        return None
    finally:
        sock.close()
    return None if code == DECLINED else (code, out)


def read_stdin() -> bytes:
    return b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()


def version() -> int:
    """VERSION is static: answered here, without the agent and without loading a plugin
    (runtimes ask it of every plugin in every network config, on every command)."""
    from tartan.cni.versions import CURRENT_VERSION, SUPPORTED_VERSIONS

    quoted = ", ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
    sys.stdout.write(f'{{"cniVersion": "{CURRENT_VERSION}", "supportedVersions": [{quoted}]}}\n')
    sys.stdout.flush()
    return 0


def relay(plugin: str, fallback: "Callable[[bytes], int]") -> int:
    """Entry point body: agent first, `fallback(stdin)` (in-process) when it is not there."""
    if os.environ.get("CNI_COMMAND") == "VERSION":
        return version()
    stdin = read_stdin()
    if not os.environ.get("TARTAN_NO_AGENT"):
        answer = ask_agent(plugin, os.environ, stdin)
        if answer is not None:
            code, out = answer
            if out:
                sys.stdout.buffer.write(out)
                sys.stdout.buffer.flush()
            return code
    return fallback(stdin)


def exec_full(plugin: str, executable: str, stdin: bytes) -> int:
    """Fallback of the bundle's small CNI executable, which has no pyroute2: become the full
    executable, with the request's stdin handed over in memory."""
    fd = os.memfd_create("cni-stdin")
    os.write(fd, stdin)
    os.lseek(fd, 0, os.SEEK_SET)
    os.dup2(fd, 0)
    os.close(fd)
    os.execv(executable, [plugin])
    return 1  # not reached


def bundle_main(full_executable: str) -> int:
    """The bundle's CNI entry: the role is the name it is called by (busybox style)."""
    role = os.path.basename(sys.argv[0])
    if role not in registry.PLUGINS:
        sys.stderr.write(f"tartan: called as {role!r}; link me as one of "
                         f"{', '.join(registry.NAMES)}\n")
        return 1
    return relay(role, lambda stdin: exec_full(role, full_executable, stdin))
