"""The kernel monitor: hand-made damage to Tartan's entries repaired at once, not at the next
full pass.

A thread reads the kernel's announcements of route, neighbour, FDB and link changes
(kernel/bulk.Events) and compares each with what the backend last asked the kernel to hold
(entries.Desired). Tartan's own writes agree with it and are ignored; a route of Tartan's
deleted or changed, a stray route in its protocol, a neighbour or FDB entry of the VXLAN
device gone, or the device or the uplink changed, wakes the agent for a full pass. Lost
announcements (the socket overflowed) do too. Nothing is read while nothing changes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from tartan.backends.entries import Desired
from tartan.backends.routes import PROTO_TARTAN
from tartan.kernel.bulk import Event, Events


def describe(event: Event | None) -> str:
    if event is None:
        return "announcements lost"
    verb = "deleted" if event.deleted else "changed"
    entry = event.entry
    if isinstance(entry, int):
        return f"link {entry} {verb}"
    return f"{type(entry).__name__} {verb}: {entry}"


class KernelMonitor:
    def __init__(self, desired: Desired, wake: Callable[[str], None]) -> None:
        self.desired, self.wake = desired, wake
        self.events = Events(PROTO_TARTAN)  # opened here: in the agent's namespace
        self.thread = threading.Thread(target=self._run, name="tartan-kernel-monitor",
                                       daemon=True)
        self.stopped = False

    def start(self) -> KernelMonitor:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped = True
        self.events.close()

    def _run(self) -> None:
        while not self.stopped:
            try:
                events = self.events.read()
            except OSError:
                return  # closed by stop()
            for event in events:
                if event is None or self.desired.disagrees(event):
                    self.wake(describe(event))
                    break
