"""A pod sandbox ("pause") image made here, since no registry is reachable: an OCI image
archive (the layout `ctr images import` reads) of one layer, Debian's static busybox, whose
entrypoint sleeps until the runtime kills it (CRI stops a sandbox with SIGKILL).

The archive is the same bytes every time for the same busybox: sorted entries, mtime 0,
owner root, no compression.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import tarfile
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = next((Path(p) for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.isfile(p)),
               None)
ENTRYPOINT = ["/bin/busybox", "sleep", "infinity"]
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
          "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return f"sha256:{hashlib.sha256(self.data).hexdigest()}"

    def descriptor(self, **extra: object) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data),
                **extra}


def _tar(entries: list[tuple[str, bytes | None, int]]) -> bytes:
    """A tar of (name, content or None for a directory, mode), in the order given."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime, info.uid, info.gid = mode, 0, 0, 0
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def platform_of_host() -> dict:
    machine = platform.machine()
    return {"architecture": ARCHES.get(machine, machine), "os": "linux"}


def image_blobs(busybox: Path) -> tuple[Blob, Blob, Blob]:
    """(layer, config, manifest) of the image."""
    layer = Blob(LAYER, _tar([("bin", None, 0o755), ("bin/busybox", busybox.read_bytes(), 0o755),
                              ("dev", None, 0o755), ("etc", None, 0o755),
                              ("proc", None, 0o555), ("sys", None, 0o555),
                              ("tmp", None, 0o1777)]))
    config = Blob(CONFIG, _json({
        **platform_of_host(),
        "config": {"Entrypoint": ENTRYPOINT, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    }))
    manifest = Blob(MANIFEST, _json({"schemaVersion": 2, "mediaType": MANIFEST,
                                     "config": config.descriptor(),
                                     "layers": [layer.descriptor()]}))
    return layer, config, manifest


def write_archive(path: Path, name: str, busybox: Path | None = BUSYBOX) -> str:
    """Write the image as an OCI archive named `name` (registry/repo:tag); returns the
    manifest's digest."""
    if busybox is None:
        raise FileNotFoundError("busybox-static is not installed (apt-get install busybox-static)")
    layer, config, manifest = image_blobs(busybox)
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {"schemaVersion": 2, "manifests": [manifest.descriptor(
        platform=platform_of_host(),
        annotations={"io.containerd.image.name": name,
                     "org.opencontainers.image.ref.name": tag})]}
    blobs = sorted((b.digest.split(":", 1)[1], b.data) for b in (layer, config, manifest))
    path.write_bytes(_tar([
        ("blobs", None, 0o755), ("blobs/sha256", None, 0o755),
        *((f"blobs/sha256/{hexdigest}", data, 0o644) for hexdigest, data in blobs),
        ("index.json", _json(index), 0o644),
        ("oci-layout", _json({"imageLayoutVersion": "1.0.0"}), 0o644),
    ]))
    return manifest.digest
