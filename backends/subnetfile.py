"""/run/tartan/subnet.env: flannel's variables, written atomically, read back on restart."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PATH = Path("/run/tartan/subnet.env")


@dataclass(frozen=True)
class SubnetFile:
    network: ipaddress.IPv4Network
    subnet: ipaddress.IPv4Network
    mtu: int
    ip_masq: bool
    gso_max_size: int = 0  # Tartan's own variable, written only when set

    def render(self) -> str:
        # flannel writes the subnet's first address with the prefix (10.244.3.1/24).
        first = f"{self.subnet.network_address + 1}/{self.subnet.prefixlen}"
        text = (f"FLANNEL_NETWORK={self.network}\nFLANNEL_SUBNET={first}\n"
                f"FLANNEL_MTU={self.mtu}\nFLANNEL_IPMASQ={'true' if self.ip_masq else 'false'}\n")
        if self.gso_max_size:
            text += f"TARTAN_GSO_MAX_SIZE={self.gso_max_size}\n"
        return text


def write(path: Path, content: SubnetFile) -> bool:
    """Write unless identical; True when the file changed."""
    text = content.render()
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return True


def previous_subnet(path: Path) -> ipaddress.IPv4Network | None:
    """The subnet a previous run of the agent wrote, if the file is there and sane."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for entry in lines:
        key, _, value = entry.partition("=")
        if key.strip() == "FLANNEL_SUBNET":
            try:
                return ipaddress.ip_interface(value.strip().strip('"')).network
            except ValueError:
                return None
    return None
