"""podman (CNI backend) running busybox containers on a network of the test's own.

podman with the CNI backend programs the bridge, the veths and iptables in the real host
network namespace: that is how a runtime works. So `PodmanNet` photographs the host first
and its `cleanup` (run by the `podman_net` fixture in conftest.py, also when the test fails)
puts it back; `leftovers` then proves it is back.

What a test gets:

- a network of its own: `<tmp>/net.d/tpm<hex>.conflist` (cniVersion 1.0.0), bridge
  `tpm<hex>`, an unused 10.251.x.0/24 (checked against the host's routes), addresses on disk
  under the test's tmp, then the reference `portmap`. The bridge plugin is the reference
  `bridge` + `host-local` (the baseline that proves the test itself) or `tartan-bridge` +
  `tartan-ipam`, by the fixture's parameter.
- a podman of its own, configured only by its own files: containers.conf (CONTAINERS_CONF:
  CNI backend, plugin dirs, config dir, file locks instead of /dev/shm, file events),
  storage.conf (CONTAINERS_STORAGE_CONF: vfs), --root/--runroot/--tmpdir in a /tmp/tpm<hex>-*
  dir of its own (podman refuses a runroot longer than 50 characters, so not under pytest's
  tmp_path), runc, cgroupfs under a cgroup parent of its own (/tartan-rt-<hex>).
- a rootfs built from busybox-static.

The finalizer removes the containers (podman rm, then by their cgroup if podman could not),
their network namespaces, the bridge and any veth left on it, the iptables rules and chains
CNI/Tartan added during the test (a diff of iptables-save before and after, IPv4 and IPv6,
nat and filter), the nftables tables and base chains iptables-nft created for them, the
containers' conntrack entries, the forwarding sysctls the plugins switched on, the
directories runc and libcni make outside tmp (/run/runc, /var/lib/cni) when they were not
there before, the cgroups and podman's storage.

TARTAN_RUNTIME_TRACE=1 puts a logging shim in front of every plugin of the conflist: each
call's CNI_* environment, stdin, stdout, stderr and exit code land in <tmp>/trace and are
appended to the message of a failing podman command (and `PodmanNet.trace()`).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness import REFERENCE_CNI, eventually, plugin_dir

PODMAN = shutil.which("podman")
RUNC = shutil.which("runc")
BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.isfile(p)), None)
APPLETS = ("sh", "cat", "echo", "ls", "ip", "ping", "sleep", "httpd", "nc", "wget")
TEST_RANGE = ipaddress.ip_network("10.251.0.0/16")
TRACE = os.environ.get("TARTAN_RUNTIME_TRACE") == "1"
PODMAN_TIMEOUT = 60

PLUGINS = {
    "reference": {"bridge": "bridge", "ipam": "host-local", "masq_chain": "CNI-"},
    "tartan": {"bridge": "tartan-bridge", "ipam": "tartan-ipam", "masq_chain": "TARTAN-"},
}

# Host state outside the test's tmp that podman, runc, libcni and the plugins may change.
IPT_COMMANDS = ("iptables", "ip6tables")
IPT_TABLES = ("nat", "filter")
BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
OUR_CHAIN = re.compile(r"^(?:CNI-|TARTAN-)")
OUR_RULE = re.compile(r"(?:^|\s)(?:-A|-j|-g)\s+(?:CNI-|TARTAN-)")
SYSCTLS = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")
OUTSIDE_DIRS = ("/run/runc", "/var/lib/cni/results", "/var/lib/cni/networks", "/var/lib/cni")
NETNS_DIR = Path("/run/netns")
PODMAN_NETNS = re.compile(r"^(?:netns|cni)-[0-9a-f-]{36}$")
PODMAN_BRIDGE = re.compile(r"^cni-podman\d+$")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _run(argv: list[str], *, check: bool = False, timeout: float = 30,
         stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=check,
                          timeout=timeout, env=env)


# --------------------------------------------------------------------------- iptables


def ipt_save(command: str, table: str) -> str:
    """`<command>-save -t table`; "" when the family's tool or the table is missing.

    With the legacy backend, reading a table that is not loaded would load it (and so
    change the host): such tables are skipped.
    """
    save = shutil.which(f"{command}-save")
    if not save:
        return ""
    if "legacy" in _run([command, "--version"]).stdout:
        names = Path(f"/proc/net/{'ip6' if command == 'ip6tables' else 'ip'}_tables_names")
        if not names.exists() or table not in names.read_text().split():
            return ""
    proc = _run([save, "-t", table])
    return proc.stdout if proc.returncode == 0 else ""


def chains_of(saved: str) -> list[str]:
    return [line[1:].split()[0] for line in saved.splitlines() if line.startswith(":")]


def rules_of(saved: str) -> list[str]:
    return [line for line in saved.splitlines() if line.startswith("-A ")]


def ipt_restore(command: str, table: str, lines: list[str]) -> str:
    """Apply `lines` to `table` in one `iptables-restore --noflush`; the error or ""."""
    payload = "\n".join([f"*{table}", *lines, "COMMIT", ""])
    proc = _run([f"{command}-restore", "--noflush", "--wait"], stdin=payload)
    return "" if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")


def ipt_undo(command: str, table: str, before: str) -> list[str]:
    """Remove the CNI-/TARTAN- chains and rules added to `table` since `before`.

    Only what is new and ours goes: rules in chains named CNI-*/TARTAN-* or jumping to one,
    chains with those names that did not exist before. Returns the problems left.
    """
    after = ipt_save(command, table)
    old_chains = set(chains_of(before))
    new_chains = [c for c in chains_of(after) if c not in old_chains and OUR_CHAIN.match(c)]
    added = Counter(rules_of(after)) - Counter(rules_of(before))
    lines = []
    for rule, count in added.items():
        if rule.split()[1] not in new_chains and OUR_RULE.search(rule):
            lines += ["-D" + rule[2:]] * count
    lines += [f"-F {c}" for c in new_chains] + [f"-X {c}" for c in new_chains]
    if not lines or not ipt_restore(command, table, lines):
        return []
    # One line at a time, so one that cannot be undone does not keep the others.
    problems = []
    for line in lines:
        if error := ipt_restore(command, table, [line]):
            problems.append(f"{command} -t {table} {line}: {error}")
    return problems


def ipt_added(command: str, table: str, before: str) -> tuple[list[str], list[str]]:
    """(rules, chains) of ours in `table` now that were not there in `before`."""
    after = ipt_save(command, table)
    rules = list((Counter(rules_of(after)) - Counter(rules_of(before))).elements())
    chains = [c for c in chains_of(after) if c not in set(chains_of(before))]
    return ([r for r in rules if OUR_RULE.search(r)],
            [c for c in chains if OUR_CHAIN.match(c)])


# --------------------------------------------------------------------------- nftables


@dataclass
class NftState:
    tables: set = field(default_factory=set)    # (family, table)
    chains: set = field(default_factory=set)    # (family, table, chain)
    rules: Counter = field(default_factory=Counter)  # (family, table, chain) -> count


def nft_state() -> NftState | None:
    """The nftables ruleset's shape, or None without `nft`.

    iptables-nft creates a table and its base chains the first time a rule goes in and
    never removes them: after the rules are gone, the empty table is still a change.
    """
    if not shutil.which("nft"):
        return None
    proc = _run(["nft", "-j", "list", "ruleset"])
    if proc.returncode != 0:
        return None
    state = NftState()
    for item in json.loads(proc.stdout).get("nftables", []):
        if table := item.get("table"):
            state.tables.add((table["family"], table["name"]))
        elif chain := item.get("chain"):
            state.chains.add((chain["family"], chain["table"], chain["name"]))
        elif rule := item.get("rule"):
            state.rules[(rule["family"], rule["table"], rule["chain"])] += 1
    return state


def _iptables_nft_table(family: str, table: str) -> bool:
    return family in ("ip", "ip6") and table in IPT_TABLES


def nft_added(before: NftState | None) -> tuple[list, list]:
    """Empty iptables-nft (tables, base chains) that are there now and were not before."""
    now = nft_state()
    if before is None or now is None:
        return [], []
    tables = [t for t in sorted(now.tables - before.tables) if _iptables_nft_table(*t)
              and not any(k[:2] == t for k, n in now.rules.items() if n)]
    chains = [c for c in sorted(now.chains - before.chains)
              if c[:2] in before.tables and _iptables_nft_table(*c[:2])
              and c[2] in BUILTIN_CHAINS and not now.rules[c]]
    return tables, chains


def nft_undo(before: NftState | None) -> list[str]:
    tables, chains = nft_added(before)
    problems = []
    for argv in ([*("nft", "delete", "chain"), *c] for c in chains):
        if (proc := _run(argv)).returncode:
            problems.append(f"{' '.join(argv)}: {proc.stderr.strip()}")
    for argv in ([*("nft", "delete", "table"), *t] for t in tables):
        if (proc := _run(argv)).returncode:
            problems.append(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return problems


# --------------------------------------------------------------------------- the host


@dataclass
class HostSnapshot:
    iptables: dict[tuple[str, str], str]
    nft: NftState | None
    sysctls: dict[str, str]
    dirs: dict[str, bool]
    netns: set[str]
    links: set[str]

    @classmethod
    def take(cls) -> HostSnapshot:
        return cls(
            iptables={(c, t): ipt_save(c, t) for c in IPT_COMMANDS for t in IPT_TABLES},
            nft=nft_state(),
            sysctls={p: Path(p).read_text() for p in SYSCTLS if Path(p).exists()},
            dirs={d: os.path.lexists(d) for d in OUTSIDE_DIRS},
            netns=set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set(),
            links=set(link_names()),
        )

    def new_podman_bridges(self) -> list[str]:
        """podman's default bridges (cni-podman<N>) that appeared since the snapshot."""
        return sorted(n for n in set(link_names()) - self.links if PODMAN_BRIDGE.match(n))

    def new_podman_netns(self) -> list[str]:
        now = set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()
        return sorted(n for n in now - self.netns if PODMAN_NETNS.match(n))


def link_names() -> list[str]:
    return [link["ifname"] for link in json.loads(_run(["ip", "-j", "link", "show"]).stdout)]


def link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", "dev", name]).returncode == 0


def bridge_ports(bridge: str) -> list[dict]:
    """The links enslaved to `bridge` (ip -j link), [] when the bridge is gone."""
    proc = _run(["ip", "-j", "link", "show", "master", bridge])
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return json.loads(proc.stdout)


def cgroup_dirs(parent: str) -> list[Path]:
    """`parent` in every cgroup hierarchy (v1: one per controller; v2: the unified root)."""
    bases = [CGROUP_ROOT] + sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir())
    relative = parent.lstrip("/")
    return [base / relative for base in bases if (base / relative).is_dir()]


def cgroup_pids(parent: str) -> set[int]:
    pids = set()
    for top in cgroup_dirs(parent):
        for procs in top.rglob("cgroup.procs"):
            pids.update(int(p) for p in procs.read_text().split())
    return pids


def remove_cgroups(parent: str) -> list[str]:
    problems = []
    for top in cgroup_dirs(parent):
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()),
                                key=lambda p: len(p.parts), reverse=True) + [top]:
            try:  # the last task may still be exiting
                eventually(lambda d=directory: _rmdir(d), 2.5, 0.05, retry_on=(OSError,))
            except AssertionError:
                problems.append(f"cgroup {directory} cannot be removed")
    return problems


def _rmdir(directory: Path) -> bool:
    with contextlib.suppress(FileNotFoundError):
        directory.rmdir()
    return True


def conntrack_addresses(subnet: ipaddress.IPv4Network) -> set[str]:
    """Addresses of `subnet` in any IPv4 conntrack entry (either direction)."""
    if not shutil.which("conntrack"):
        return set()
    found = set()
    for text in re.findall(r"(?:src|dst)=(\S+)", _run(["conntrack", "-L"]).stdout):
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(text) in subnet:
                found.add(text)
    return found


def conntrack_flush(subnet: ipaddress.IPv4Network) -> None:
    """Forget the flows of `subnet`: pings, the hostPort DNAT, the bridge's IGMP reports."""
    for address in sorted(conntrack_addresses(subnet)):
        for flag in ("--orig-src", "--orig-dst", "--reply-src", "--reply-dst"):
            _run(["conntrack", "-D", flag, address])


def mounts_under(path: Path) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(path) or point.startswith(f"{path}/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.251.0.0/16 that no route or address of the host overlaps."""
    used = []
    for argv in (["ip", "-j", "-4", "route", "show", "table", "all"],
                 ["ip", "-j", "-4", "addr", "show"]):
        for entry in json.loads(_run(argv).stdout or "[]"):
            candidates = [entry.get("dst")] + [
                f"{a['local']}/{a['prefixlen']}" for a in entry.get("addr_info", [])]
            for dst in candidates:
                if dst and dst != "default":
                    with contextlib.suppress(ValueError):
                        used.append(ipaddress.ip_network(dst, strict=False))
    subnets = list(TEST_RANGE.subnets(new_prefix=24))
    random.shuffle(subnets)
    for subnet in subnets:
        if not any(subnet.overlaps(u) for u in used if u.version == 4):
            return subnet
    raise AssertionError(f"every /24 of {TEST_RANGE} is in use on this host")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


def http_get(host: str, port: int, path: str = "/", deadline: float = 10) -> str:
    """GET over plain http.client (no proxy from the environment): the first non-empty body,
    retried on connection errors for `deadline` seconds."""

    def get() -> str:
        conn = http.client.HTTPConnection(host, port, timeout=2)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()
    return eventually(get, deadline, 0.2, what=f"GET http://{host}:{port}{path}",
                      retry_on=(OSError,))


def build_rootfs(root: Path) -> Path:
    """A busybox-static rootfs: the applets the tests use, /etc/passwd, mount points."""
    assert BUSYBOX, "busybox-static is not installed (apt-get install busybox-static)"
    for name in ("bin", "etc", "proc", "sys", "dev", "run", "tmp", "www"):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    return root


SHIM = """#!/bin/sh
# Logging shim: record the call, run the real plugin, pass its reply through.
d="{trace}/$(date +%s%N)-$$-{name}-$CNI_COMMAND"
mkdir -p "$d"
env | grep '^CNI_' > "$d/env"
cat > "$d/stdin"
{real} < "$d/stdin" > "$d/stdout" 2> "$d/stderr"
rc=$?
echo "$rc" > "$d/rc"
cat "$d/stdout"
cat "$d/stderr" >&2
exit "$rc"
"""


# --------------------------------------------------------------------------- the fixture


@dataclass
class PodmanNet:
    """One test's network, podman and rootfs: config, addresses and rootfs under the test's
    tmp, podman's storage under `state`."""

    kind: str
    tmp: Path
    name: str
    subnet: ipaddress.IPv4Network
    snapshot: HostSnapshot
    cgroup_parent: str
    state: Path  # podman's root, runroot and tmpdir: short (runroot <= 50 characters)
    plugin_dirs: list[str]
    started: list[str] = field(default_factory=list)  # ids of detached containers
    sandboxes: list[str] = field(default_factory=list)  # their netns paths, for cleanup

    @property
    def bridge(self) -> str:
        return self.name

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def masq_chain(self) -> str:
        return PLUGINS[self.kind]["masq_chain"]

    @property
    def data_dir(self) -> Path:
        return self.tmp / "cni-networks"

    @property
    def rootfs(self) -> Path:
        return self.tmp / "rootfs"

    @property
    def env(self) -> dict:
        env = dict(os.environ)
        env["CONTAINERS_CONF"] = str(self.tmp / "containers.conf")
        env["CONTAINERS_STORAGE_CONF"] = str(self.tmp / "storage.conf")
        env["TMPDIR"] = str(self.state / "tmp")
        return env

    @property
    def global_args(self) -> list[str]:
        return ["--root", str(self.state / "root"), "--runroot", str(self.state / "runroot"),
                "--tmpdir", str(self.state / "tmp"), "--storage-driver", "vfs",
                "--runtime", "runc", "--cgroup-manager", "cgroupfs",
                "--events-backend", "file"]

    def conflist(self) -> dict:
        plugins = PLUGINS[self.kind]
        return {
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": plugins["bridge"],
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": True,
                    "ipam": {"type": plugins["ipam"], "subnet": str(self.subnet),
                             "dataDir": str(self.data_dir)},
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def write_config(self) -> None:
        for path in (self.state / "root", self.state / "runroot", self.state / "tmp",
                     self.tmp / "net.d", self.data_dir):
            path.mkdir(parents=True, exist_ok=True)
        (self.tmp / "net.d" / f"{self.name}.conflist").write_text(
            json.dumps(self.conflist(), indent=2))
        dirs = ", ".join(json.dumps(d) for d in self.plugin_dirs)
        (self.tmp / "containers.conf").write_text(f"""\
[containers]
default_ulimits = []

[network]
network_backend = "cni"
cni_plugin_dirs = [{dirs}]
network_config_dir = "{self.tmp / 'net.d'}"

[engine]
lock_type = "file"
tmp_dir = "{self.state / 'tmp'}"
events_logger = "file"
cgroup_manager = "cgroupfs"
runtime = "runc"
""")
        (self.tmp / "storage.conf").write_text(f"""\
[storage]
driver = "vfs"
graphroot = "{self.state / 'root'}"
runroot = "{self.state / 'runroot'}"
""")
        build_rootfs(self.rootfs)

    def install_trace_shims(self) -> None:
        shims, trace = self.tmp / "shim", self.tmp / "trace"
        shims.mkdir()
        trace.mkdir()
        search = os.pathsep.join(map(str, [plugin_dir(), REFERENCE_CNI]))
        for name in (*(PLUGINS[self.kind][k] for k in ("bridge", "ipam")), "portmap"):
            real = shutil.which(name, path=search)
            assert real, f"plugin {name} not found on {search}"
            (shims / name).write_text(SHIM.format(trace=trace, name=name, real=real))
            (shims / name).chmod(0o755)
        self.plugin_dirs.insert(0, str(shims))

    def trace(self) -> str:
        """Every plugin call the shims recorded (TARTAN_RUNTIME_TRACE=1), oldest first."""
        trace = self.tmp / "trace"
        if not trace.is_dir():
            return ""
        out = []
        for call in sorted(trace.iterdir(), key=lambda p: int(p.name.split("-")[0])):
            if call.name.endswith("-VERSION"):
                continue
            parts = [f"== {call.name}"]
            for part in ("env", "stdin", "rc", "stdout", "stderr"):
                path = call / part
                text = path.read_text().strip() if path.exists() else "(missing)"
                with contextlib.suppress(ValueError):
                    text = json.dumps(json.loads(text))  # portmap pretty-prints
                parts.append(f"-- {part}:\n{text}")
            out.append("\n".join(parts))
        return "\n".join(out)

    # ---- podman

    def podman(self, *args: str, check: bool = True,
               timeout: float = PODMAN_TIMEOUT) -> subprocess.CompletedProcess:
        proc = _run([PODMAN, *self.global_args, *args], env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            trace = self.trace()
            raise AssertionError(
                f"podman {' '.join(args)} failed with exit code {proc.returncode}:\n"
                f"{proc.stderr.strip()}\n{proc.stdout.strip()}"
                + (f"\nplugin calls:\n{trace}" if trace else ""))
        return proc

    def run(self, *command: str, detach: bool = False, rm: bool = False,
            publish: tuple[tuple[int, int], ...] = (), cidfile: Path | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """`podman run` of the test's rootfs on the test's network."""
        args = ["run", "--network", self.name, "--cgroup-parent", self.cgroup_parent]
        if detach:
            args.append("--detach")
        if rm:
            args.append("--rm")
        if cidfile:
            args += ["--cidfile", str(cidfile)]
        for host_port, port in publish:
            args += ["--publish", f"{host_port}:{port}"]
        # --rootfs is a flag: the first argument after the options is the rootfs.
        proc = self.podman(*args, "--rootfs", str(self.rootfs), *command, check=check)
        if detach and proc.returncode == 0:
            self.started.append(proc.stdout.strip())
        return proc

    def check_network_loaded(self) -> None:
        """Fail unless podman loaded the test's conflist as it is.

        podman validates every conflist by running each plugin's VERSION; when one fails it
        only logs a warning and skips the file. With `default_network` naming the skipped
        network, podman would even make one of that name in memory (bridge cni-podman0,
        10.88.0.0/16, /var/lib/cni/networks): never name it there, and check here.
        """
        proc = self.podman("network", "inspect", self.name, check=False)
        assert proc.returncode == 0, (
            f"podman did not load {self.name}.conflist:\n{proc.stderr.strip()}")
        network = json.loads(proc.stdout)[0]
        expected = PLUGINS[self.kind]["bridge"]
        assert network.get("driver") == expected, (network, proc.stderr)
        if expected == "bridge":  # podman reads the reference bridge's fields back
            assert network.get("network_interface") == self.bridge, network

    def inspect(self, container: str) -> dict:
        return json.loads(self.podman("container", "inspect", container).stdout)[0]

    def container_ids(self) -> list[str]:
        proc = self.podman("ps", "--all", "--no-trunc", "--format", "{{.ID}}", check=False)
        return proc.stdout.split() if proc.returncode == 0 else []

    # ---- what is on the host

    def reservations(self) -> list[str]:
        """Address reservation files under dataDir/<net>/ (host-local's layout)."""
        folder = self.data_dir / self.name
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file()
                      and p.name != "lock" and not p.name.startswith("last_reserved"))

    def bridge_ports(self) -> list[dict]:
        return bridge_ports(self.bridge)

    def rules(self, table: str = "nat") -> list[str]:
        """The IPv4 and IPv6 rules of `table` now."""
        return [r for c in IPT_COMMANDS for r in rules_of(ipt_save(c, table))]

    def added(self) -> tuple[list[str], list[str]]:
        """(rules, chains) named CNI-*/TARTAN-* or jumping to one, added since the start."""
        rules, chains = [], []
        for (command, table), before in self.snapshot.iptables.items():
            new_rules, new_chains = ipt_added(command, table, before)
            rules += new_rules
            chains += new_chains
        return rules, chains

    # ---- cleanup

    def cleanup(self) -> list[str]:
        """Put the host back as the snapshot found it; returns what could not be undone.

        Every step runs, also when an earlier one failed.
        """
        problems: list[str] = []
        for step in (self._remove_containers, self._remove_network, self._restore_host,
                     self._remove_state):
            try:
                problems += step()
            except Exception as exc:  # report it, and go on cleaning
                problems.append(f"{step.__name__}: {type(exc).__name__}: {exc}")
        return problems

    def _remove_containers(self) -> list[str]:
        problems = []
        for cid in dict.fromkeys(self.container_ids() + self.started):
            proc = self.podman("container", "inspect", cid, check=False)
            if proc.returncode == 0:
                self.sandboxes += [i["NetworkSettings"].get("SandboxKey") or ""
                                   for i in json.loads(proc.stdout)]
        proc = self.podman("rm", "--force", "--all", "--time", "0", check=False)
        if proc.returncode != 0:
            problems.append(f"podman rm -f -a failed: {proc.stderr.strip()}")
        with contextlib.suppress(AssertionError):  # conmon's exit command may be finishing
            eventually(lambda: not cgroup_pids(self.cgroup_parent), 5, 0.1)
        for pid in cgroup_pids(self.cgroup_parent):
            problems.append(f"process {pid} still in cgroup {self.cgroup_parent}: killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return problems

    def _remove_network(self) -> list[str]:
        problems = []
        for sandbox in sorted(s for s in set(self.sandboxes) if s):
            if os.path.lexists(sandbox):
                problems.append(f"netns {sandbox} left by podman rm")
                _run(["ip", "netns", "del", os.path.basename(sandbox)])
        for name in self.snapshot.new_podman_netns():
            problems.append(f"netns {name} left")
            _run(["ip", "netns", "del", name])
        for port in bridge_ports(self.bridge):
            _run(["ip", "link", "del", "dev", port["ifname"]])
        if link_exists(self.bridge):
            _run(["ip", "link", "del", "dev", self.bridge])
        for bridge in self.snapshot.new_podman_bridges():
            problems.append(f"podman's default bridge {bridge} was made")
            _run(["ip", "link", "del", "dev", bridge])
        for (command, table), before in self.snapshot.iptables.items():
            problems += ipt_undo(command, table, before)
        problems += nft_undo(self.snapshot.nft)
        conntrack_flush(self.subnet)
        return problems

    def _restore_host(self) -> list[str]:
        problems = []
        for path, value in self.snapshot.sysctls.items():
            if Path(path).read_text() != value:
                Path(path).write_text(value)
        ours = [Path("/var/lib/cni/networks") / self.name,  # host-local's default dataDir
                *Path("/var/lib/cni/results").glob(f"{self.name}-*")]  # libcni's cache
        for path in (p for p in ours if os.path.lexists(p)):
            problems.append(f"{path} left")
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for directory in OUTSIDE_DIRS:  # deepest first
            if not self.snapshot.dirs[directory] and os.path.isdir(directory):
                try:
                    os.rmdir(directory)
                except OSError:
                    problems.append(f"{directory} was created and is not empty: "
                                    f"{sorted(os.listdir(directory))}")
        return problems + remove_cgroups(self.cgroup_parent)

    def _remove_state(self) -> list[str]:
        for point in mounts_under(self.state):
            if _run(["umount", point]).returncode:
                _run(["umount", "--lazy", point])
        shutil.rmtree(self.state, ignore_errors=True)
        return []

    def leftovers(self) -> list[str]:
        """Everything of this test still on the host (after cleanup: must be nothing)."""
        left = []
        if link_exists(self.bridge):
            left.append(f"bridge {self.bridge}")
        left += [f"bridge {b}" for b in self.snapshot.new_podman_bridges()]
        rules, chains = self.added()
        left += [f"iptables rule {r}" for r in rules] + [f"iptables chain {c}" for c in chains]
        tables, base_chains = nft_added(self.snapshot.nft)
        left += [f"nft table {t}" for t in tables] + [f"nft chain {c}" for c in base_chains]
        left += [f"netns {n}" for n in self.snapshot.new_podman_netns()]
        left += [f"sysctl {p}" for p, v in self.snapshot.sysctls.items()
                 if Path(p).read_text() != v]
        left += [f"directory {d}" for d, existed in self.snapshot.dirs.items()
                 if not existed and os.path.lexists(d)]
        left += [f"cgroup {d}" for d in cgroup_dirs(self.cgroup_parent)]
        left += [f"conntrack entries of {a}" for a in sorted(conntrack_addresses(self.subnet))]
        left += [f"mount {m}" for m in mounts_under(self.state)]
        if self.state.exists():
            left.append(f"podman state {self.state}")
        return left
