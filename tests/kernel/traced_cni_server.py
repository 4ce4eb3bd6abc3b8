"""`python -m tartan.cni.server`, telling on stderr when it takes up and answers a request.

For the fast-path test that must know which requests the server had begun and not answered
when it was killed. One line per event, each written before the event's effect ("begin"
before the plugin runs, "reply" before the reply is sent), in one write(2) each: a request
with a "begin" line and no "reply" line had certainly not been answered when the server died.

    begin ADD <container id>
    reply ADD <container id>
"""

from __future__ import annotations

import os
import sys

from tartan.cni import server


class TracedServer(server.CniServer):
    def handle(self, request, send=lambda _: None):
        key = f"{request.command} {request.container}"
        _say(f"begin {key}")

        def traced_send(reply):
            _say(f"reply {key}")
            send(reply)

        return super().handle(request, traced_send)


def _say(line: str) -> None:
    os.write(2, f"{line}\n".encode())


if __name__ == "__main__":
    server.CniServer = TracedServer  # what server.main() builds; everything else is its own
    raise SystemExit(server.main(sys.argv[1:]))
