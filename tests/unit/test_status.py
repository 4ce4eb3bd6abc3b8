"""`tartanctl status` against a real HTTP server, its rendering, and the text helpers."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tartan.debug import ctl, status
from tartan.debug.fmt import relative, table

DOC = {
    "node": {"publicIP": "198.18.1.11", "subnet": "10.244.3.0/24", "backend": "vxlan",
             "leaseExpires": 1000.0 + 3600 * 23 + 60 * 5, "ready": True},
    "peers": [
        {"subnet": "10.244.9.0/24", "publicIP": "198.18.2.12", "backend": "vxlan",
         "mode": "vxlan", "state": "programmed", "reason": ""},
        {"subnet": "10.244.4.0/24", "publicIP": "198.18.3.13", "backend": "host-gw",
         "mode": "skipped", "state": "skipped", "reason": "not on this node's L2 segment"},
    ],
}


def serve(body: bytes, code: int = 200) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(code if self.path == "/status" else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def agent() -> Iterator[str]:
    doc = {**DOC, "node": {**DOC["node"], "leaseExpires": time.time() + 7200}}
    yield from serve(json.dumps(doc).encode())


def free_addr() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_fetch_and_print(agent, capsys):
    assert ctl.main(["status", "--http-addr", agent]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "node:     198.18.1.11"
    assert out[1].startswith("subnet:   10.244.3.0/24 (lease expires in ")
    assert "ready:    yes" in out
    assert out[4] == "peers (2):"
    assert out[5].split() == ["SUBNET", "PUBLIC", "IP", "MODE", "STATE", "REASON"]
    assert out[6].split() == ["10.244.4.0/24", "198.18.3.13", "skipped", "skipped", "not",
                              "on", "this", "node's", "L2", "segment"]
    assert out[7].split() == ["10.244.9.0/24", "198.18.2.12", "vxlan", "programmed", "-"]


def test_render_with_a_relative_expiry():
    lines = status.render(DOC, now=1000.0)
    assert lines[1] == "subnet:   10.244.3.0/24 (lease expires in 23h 5m)"


def test_render_of_a_node_without_peers_or_lease():
    lines = status.render({"node": {"ready": False}, "peers": []}, now=0)
    assert lines == ["node:     -", "subnet:   - (lease expires -)", "backend:  -",
                     "ready:    NO", "peers:    none"]


def test_agent_not_answering_is_one_line_and_exit_1(capsys):
    addr = free_addr()
    assert ctl.main(["status", "--http-addr", addr]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"tartanctl status: tartand is not answering on {addr}: "
                            "is it running?\n")


def test_agent_answering_an_error_or_garbage(capsys):
    for body, code, expected in ((b"oops", 500, "HTTP 500"), (b"<html>", 200, "not JSON"),
                                 (b"[1]", 200, "unexpected")):
        for addr in serve(body, code):
            assert ctl.main(["status", "--http-addr", addr]) == 1
        assert expected in capsys.readouterr().err


def test_table_pads_columns_and_fills_empty_cells():
    assert table(["A", "BB"], [["x", None], ["yyy", "z"]], "  ") == [
        "  A    BB", "  x    -", "  yyy  z"]


@pytest.mark.parametrize("seconds,text", [
    (0, "in 0s"), (12, "in 12s"), (3600 * 23 + 59 * 60 + 30, "in 23h 59m"),
    (-303, "5m 3s ago"), (86400 * 2 + 7200, "in 2d 2h"),
])
def test_relative(seconds, text):
    assert relative(seconds) == text


def test_lab_subcommands_are_registered(capsys):
    with pytest.raises(SystemExit) as exc:
        ctl.main(["lab", "up", "--backend", "ipip"])
    assert exc.value.code == 2
    assert "invalid choice: 'ipip'" in capsys.readouterr().err
    args = ctl.parser().parse_args(["lab", "leave", "node2", "--name", "x"])
    assert (args.lab_command, args.node, args.name) == ("leave", "node2", "x")


def test_lab_bad_name_is_one_error_line(capsys):
    assert ctl.main(["lab", "status", "--name", "Bad-Name"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tartanctl lab status: error: lab name 'Bad-Name' is invalid")
    assert len(err.splitlines()) == 1


def test_big_tcp_in_words_for_a_kernel_without_it_one_with_it_off_and_on():
    from tartan.backends.daemon import big_tcp
    from tartan.backends.registry import NodeInfo

    def node(gso: int) -> NodeInfo:
        return NodeInfo("eth0", 2, 1500, "192.168.56.11", (), iface_gso_max=gso)

    assert big_tcp(node(0), 0) == "not supported by this kernel (IPv4 BIG TCP needs 6.3)"
    assert big_tcp(node(65536), 0).startswith("off: eth0 allows 65536 bytes")
    assert big_tcp(node(185000), 185000) == "on: pods send IPv4 packets of up to 185000 bytes"
    assert "BIG TCP:  on: pods send" in "\n".join(status.render(
        {"node": {"bigTCP": big_tcp(node(185000), 185000)}, "peers": []}, now=0))


def test_tartanctl_lists_every_command_as_its_module_registers_it():
    import argparse
    import importlib

    listed = ctl.parser()  # every module registers its own
    for name, (module, text) in ctl.COMMANDS.items():
        p = argparse.ArgumentParser()
        sub = p.add_subparsers()
        importlib.import_module(f"tartan.debug.{module}").register(sub)
        assert name in sub.choices, (name, module)
        helps = {a.dest: a.help for a in sub._choices_actions}
        assert helps[name] == text, name
    names = next(a for a in listed._actions if isinstance(a, argparse._SubParsersAction))
    assert list(names.choices) == list(ctl.COMMANDS)
