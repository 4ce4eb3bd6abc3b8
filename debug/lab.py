"""`tartanctl lab`: a multi-node Tartan cluster in network namespaces on this machine.

    up     router + segments, nodes (netns + mount ns), store, tartand per node, pods
    join   one more node, with its pods        leave  one node, its pods and its lease
    restart  one node's tartand (its datapath stays)
    down   everything, found by name (works after a crash or a partial `up`)

The lab lives in namespaces it makes and in /run/tartan-lab/<name>; nothing is created
in the host's network namespace, and no lab address is routed out of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tartan.cni import registry
from tartan.debug import lab_agents, lab_pods, lab_store, lab_underlay
from tartan.debug import lab_plan as plan
from tartan.debug import lab_state as files
from tartan.debug.lab_state import LabState, Node
from tartan.debug.lab_sys import NETNS_DIR, LabError, Sys, in_namespace, pids_in, stop
from tartan.kernel.files import write_atomic


@dataclass
class UpOptions:
    backend: str = "vxlan"
    store: str = "sqlite"
    nodes: int = 3
    segments: int = 0  # 0: the backend's default
    pods_per_node: int = 2
    reconcile_interval: float = 5.0
    ready_timeout: float = 60.0
    big_tcp: bool = False  # the underlay takes 192 KiB IPv4 packets, as a BIG TCP NIC would


class Lab:
    def __init__(self, name: str, sys: Sys | None = None,
                 say: Callable[[str], None] | None = None, root: Path = plan.LAB_ROOT):
        self.name = plan.check_name(name)
        self.sys = sys or Sys()
        self.say = say or (lambda line: print(line, flush=True))
        self.root = root
        self.dir = files.lab_dir(name, root)
        self.made_something = False  # whether `up` got as far as creating anything

    # ------------------------------------------------------------------------ up

    def up(self, opts: UpOptions) -> LabState:
        segments = opts.segments or plan.default_segments(opts.backend)
        plan.validate(opts.backend, opts.store, opts.nodes, segments, opts.pods_per_node)
        self._check_can_start(segments)
        self.say(f"lab {self.name}: {opts.nodes} nodes, backend {opts.backend}, store "
                 f"{opts.store}, in {self.dir}")
        state = LabState(self.name, opts.backend, opts.store, segments, opts.pods_per_node,
                         opts.reconcile_interval, big_tcp=opts.big_tcp)
        self._make_dir(state)
        if opts.backend == "host-gw" and segments > 1:
            self.say("note: host-gw needs every node on one L2 segment; peers on another "
                     "segment will be skipped")
        nets = ", ".join(str(plan.segment_network(s)) for s in range(1, segments + 1))
        self.say(f"[1/5] underlay: router {plan.router_netns(self.name)}, segment(s) {nets}")
        lab_underlay.make_router(self.sys, self.name, segments, opts.big_tcp)
        self.say(f"[2/5] {opts.nodes} nodes (network + mount namespace each)")
        nodes = [self._add_node(state, i) for i in range(1, opts.nodes + 1)]
        self.say(f"[3/5] store: {opts.store}")
        self._start_store(state)
        self.say(f"[4/5] tartand on every node ({opts.backend})")
        self._start_agents(state, nodes, opts.ready_timeout)
        lab_agents.wait_converged(self.name, state.nodes, self.say, opts.ready_timeout)
        self.say(f"[5/5] pods: {opts.pods_per_node} per node, by the `tartan` CNI plugin")
        self._add_pods(state, nodes)
        self.say(f"lab {self.name} is up: {len(nodes)} nodes, {len(state.pods)} pods "
                 f"(tartanctl lab status|pods|ping-matrix|down --name {self.name})")
        return state

    def _check_can_start(self, segments: int) -> None:
        if os.geteuid() != 0:
            raise LabError("needs root: the lab creates network and mount namespaces")
        _check_installed()
        if self.dir.exists() or self._namespaces():
            raise LabError(f"lab {self.name} already exists: `tartanctl lab down --name "
                           f"{self.name}` first, or pick another --name")
        clash = lab_underlay.host_overlaps(self.sys, segments)
        if clash:
            raise LabError("refusing to start, the lab's ranges are in use on this host: "
                           + "; ".join(clash))

    def _make_dir(self, state: LabState) -> None:
        self.dir.mkdir(parents=True)
        self.made_something = True
        lab_underlay.ensure_mountpoints(self.root, self.say)
        write_atomic(self.dir / "net-conf.json", json.dumps(plan.net_conf(state.backend)))
        files.save(state, self.root)

    def _add_node(self, state: LabState, index: int) -> Node:
        spec = plan.node_plan(self.name, index, state.segments)
        lab_underlay.wire_node(self.sys, spec, state.big_tcp)
        node = Node(spec.name, index, spec.segment, spec.ip, spec.netns)
        state.nodes.append(node)
        node.holder_pid = lab_underlay.start_holder(self.sys, spec.netns)
        files.save(state, self.root)
        node_dir = files.node_dir(self.name, node.name, self.root)
        lab_underlay.mount_node_dirs(self.sys, node.holder_pid, node_dir)
        lab_pods.write_network_config(node_dir)
        self.say(f"  {node.name}: {node.ip} on segment {node.segment}, netns {node.netns}, "
                 f"holder pid {node.holder_pid}")
        return node

    def _start_store(self, state: LabState) -> None:
        if state.store == "etcd":
            state.etcd_pid = lab_store.start_etcd(self.sys, self.name, self.dir)
            files.save(state, self.root)
            self.say(f"  etcd {plan.etcd_endpoint()} in {plan.router_netns(self.name)} "
                     f"(pid {state.etcd_pid})")
        else:
            self.say(f"  SQLite {lab_store.sqlite_path(self.dir)}, shared by the nodes")

    def _agent_options(self, state: LabState) -> lab_agents.AgentOptions:
        return lab_agents.AgentOptions(lab_store.tartand_store_args(state.store, self.dir),
                                       self.dir / "net-conf.json", state.reconcile_interval)

    def _start_agents(self, state: LabState, nodes: list[Node], timeout: float) -> None:
        opts = self._agent_options(state)
        for node in nodes:
            node.tartand_pid = lab_agents.start(self.sys, self.name, node, opts)
            files.save(state, self.root)
        lab_agents.wait_ready(self.name, nodes, self.say, timeout)

    def _add_pods(self, state: LabState, nodes: list[Node]) -> None:
        for node in nodes:
            for k in range(1, state.pods_per_node + 1):
                pod = lab_pods.new_pod(node, k)
                state.pods.append(pod)
                files.save(state, self.root)
                lab_pods.add_pod(self.sys, node, pod)
                files.save(state, self.root)
                self.say(f"  {pod.name}: {pod.address} (netns {pod.netns})")

    # ---------------------------------------------------------------- join/leave

    def load(self) -> LabState:
        state = files.load(self.name, self.root)
        if state is None:
            raise LabError(f"no lab {self.name} ({files.state_path(self.name, self.root)} "
                           f"is missing): `tartanctl lab up --name {self.name}` first")
        return state

    def join(self, ready_timeout: float = 60.0) -> Node:
        state = self.load()
        index = state.next_index()
        self.say(f"joining node{index} to lab {self.name}")
        node = self._add_node(state, index)
        self._start_agents(state, [node], ready_timeout)
        lab_agents.wait_converged(self.name, state.nodes, self.say, ready_timeout)
        self._add_pods(state, [node])
        self.say(f"node{index} joined: {node.ip}, {len(state.pods_of(node.name))} pods")
        return node

    def _node(self, state: LabState, node_name: str) -> Node:
        plan.node_index(node_name)
        node = state.node(node_name)
        if node is None:
            raise LabError(f"lab {self.name} has no {node_name}: nodes are "
                           + ", ".join(n.name for n in state.nodes))
        return node

    def restart(self, node_name: str, ready_timeout: float = 60.0) -> Node:
        """Stop the node's tartand (the datapath stays) and start it again."""
        state = self.load()
        node = self._node(state, node_name)
        lab_agents.stop_agent(node)
        self.say(f"{node_name}: tartand stopped (pid {node.tartand_pid}), starting it again")
        self._start_agents(state, [node], ready_timeout)
        lab_agents.wait_converged(self.name, state.nodes, self.say, ready_timeout)
        return node

    def leave(self, node_name: str) -> None:
        state = self.load()
        node = self._node(state, node_name)
        self.say(f"{node_name} leaves lab {self.name}")
        lab_agents.stop_agent(node)
        self.say(f"  tartand stopped (pid {node.tartand_pid})")
        gone = [pod.key for pod in state.pods_of(node.name)]
        self._delete_pods(state, node)
        self._forget_pods(state, gone)
        self._delete_lease(state, node)
        self._remove_node(state, node)
        lab_agents.wait_converged(self.name, state.nodes, self.say)
        self.say(f"{node_name} is gone")

    def _delete_pods(self, state: LabState, node: Node) -> None:
        for pod in state.pods_of(node.name):
            lab_pods.del_pod(self.sys, node, pod)
            state.pods.remove(pod)
            files.save(state, self.root)
            self.say(f"  DEL {lab_pods.label(pod)}")

    def _forget_pods(self, state: LabState, keys: list[str]) -> None:
        """As Kubernetes' pod GC: the pods of a node that is gone go from the store too."""
        for key in lab_store.forget_pods(state.store, self.name, self.dir, keys):
            self.say(f"  pod {key} deleted from the store")

    def _delete_lease(self, state: LabState, node: Node) -> None:
        leases = lab_store.leases(state.store, self.name, self.dir)
        for lease in [x for x in leases if x.public_ip == node.ip]:
            lab_store.delete_lease(state.store, self.name, self.dir, lease.subnet)
            self.say(f"  lease {lease.subnet} deleted from the store")

    def _remove_node(self, state: LabState, node: Node) -> None:
        stop(pids_in(node.netns))
        self.sys.run(["ip", "netns", "del", node.netns], check=False)
        shutil.rmtree(files.node_dir(self.name, node.name, self.root), ignore_errors=True)
        state.nodes.remove(node)
        files.save(state, self.root)
        self.say(f"  namespace {node.netns} removed")

    # ---------------------------------------------------------------------- down

    def _namespaces(self) -> list[str]:
        """The lab's namespaces, pods first, then nodes, the router last."""
        pattern = re.compile(rf"^{self.name}-(router|node\d+(-pod\d+)?)$")
        names = [p.name for p in NETNS_DIR.iterdir()] if NETNS_DIR.is_dir() else []
        return sorted((n for n in names if pattern.match(n)),
                      key=lambda n: (-n.count("-"), n.endswith("router"), n))

    def down(self) -> list[str]:
        """Remove everything of the lab; what could not be removed (empty when clean)."""
        namespaces = self._namespaces()
        if not namespaces and not self.dir.exists():
            self.say(f"lab {self.name}: nothing to remove")
            return self._leftovers()
        self.say(f"removing lab {self.name}: {len(namespaces)} namespaces")
        self._delete_all_pods()
        for ns in namespaces:
            self._stop_processes(ns)
        for ns in namespaces:
            self.sys.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        removed = lab_underlay.remove_mountpoints(self.root)
        if removed:
            self.say(f"  removed the mount points the lab created: {', '.join(removed)}")
        _rmdir_if_empty(self.root)
        left = self._leftovers()
        self.say(f"lab {self.name} removed" if not left else
                 f"lab {self.name}: left behind: {'; '.join(left)}")
        return left

    def _delete_all_pods(self) -> None:
        """CNI DEL every pod whose node still runs; failures are reported, not fatal."""
        state = files.load(self.name, self.root)
        if state is None:
            return
        for pod in state.pods:
            node = state.node(pod.node)
            if node is None or not in_namespace(node.holder_pid, node.netns):
                continue  # the node is already gone: its pods' links went with it
            try:
                lab_pods.del_pod(self.sys, node, pod)
                self.say(f"  DEL {lab_pods.label(pod)}")
            except LabError as exc:
                self.say(f"  {exc} (continuing)")

    def _stop_processes(self, netns: str) -> None:
        pids = pids_in(netns)
        if pids:
            killed = stop(pids)
            self.say(f"  stopped {len(pids)} process(es) in {netns}"
                     + (f" ({len(killed)} needed SIGKILL)" if killed else ""))

    def _leftovers(self) -> list[str]:
        left = [f"namespace {ns}" for ns in self._namespaces()]
        left += [f"dir {self.dir}"] if self.dir.exists() else []
        left += [f"mount {m.split()[4]}" for m in lab_underlay.host_lab_mounts(self.root)]
        return left


def _check_installed() -> None:
    for exe in ("tartand", *registry.NAMES):
        if not os.access(lab_agents.VENV_BIN / exe, os.X_OK):
            raise LabError(f"{lab_agents.VENV_BIN / exe} not found: run `make venv` first")


def _rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()
