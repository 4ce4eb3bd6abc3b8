"""What tartanctl's kubectl-shaped commands share: the resource types and their kubectl
names, the store behind the flags, kubectl's table and AGE formats, and the edge that turns
every failure into one line and an exit code.

kubectl's wording is kept where a script may match it: `pod/a created`,
`Error from server (NotFound): pods "a" not found`, `No resources found in x namespace.`
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tartan.ipam.objects import NAMESPACES, NETWORK_POLICIES, PODS, InvalidObjectKey, ObjectStore
from tartan.netpol.manifest import ManifestError
from tartan.netpol.model import Namespace, NetworkPolicy, Pod

Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Resource:
    kind: str  # the manifest's kind
    store_kind: str  # the ObjectStore kind
    singular: str
    group: str  # "" for the core API
    namespaced: bool
    short: str

    @property
    def plural(self) -> str:
        return self.store_kind

    def qualified(self, name: str) -> str:
        """kubectl's `TYPE.GROUP` for a resource name: `networkpolicy.networking.k8s.io`."""
        return f"{name}.{self.group}" if self.group else name

    def ref(self, name: str) -> str:
        """`-o name` and apply's form: `networkpolicy.networking.k8s.io/deny-all`."""
        return f"{self.qualified(self.singular)}/{name}"

    def not_found(self, name: str) -> str:
        return f'Error from server (NotFound): {self.qualified(self.plural)} "{name}" not found'

    def names(self) -> tuple[str, ...]:
        return (self.plural, self.singular, self.short, self.qualified(self.plural),
                self.qualified(self.singular))


NAMESPACE = Resource("Namespace", NAMESPACES, "namespace", "", False, "ns")
POD = Resource("Pod", PODS, "pod", "", True, "po")
NETWORK_POLICY = Resource("NetworkPolicy", NETWORK_POLICIES, "networkpolicy",
                          "networking.k8s.io", True, "netpol")
RESOURCES = (NAMESPACE, POD, NETWORK_POLICY)
_BY_NAME = {name: r for r in RESOURCES for name in r.names()}


def resource(text: str) -> Resource:
    """An argparse type: a resource type as kubectl accepts it (plural, singular, short)."""
    found = _BY_NAME.get(text.lower())
    if found is None:
        raise argparse.ArgumentTypeError(
            f'the server doesn\'t have a resource type "{text}"; use namespaces (ns), '
            "pods (po) or networkpolicies (netpol)")
    return found


def identify(model: Namespace | Pod | NetworkPolicy) -> tuple[Resource, str]:
    """The resource type and store key of a validated object."""
    if isinstance(model, Namespace):
        return NAMESPACE, model.name
    return (POD if isinstance(model, Pod) else NETWORK_POLICY), model.key


def object_key(res: Resource, namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if res.namespaced else name


# -- kubectl's output formats ---------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """kubectl's columns (Go tabwriter: minimum width 6, padding 3, last column unpadded)."""
    columns = list(zip(headers, *rows, strict=False))[:-1]
    widths = [max(6, max(len(cell) for cell in column) + 3) for column in columns]
    return ["".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + line[-1]
            for line in (headers, *rows)]


def human_duration(seconds: float) -> str:
    """kubectl's AGE (apimachinery duration.HumanDuration): 45s, 3m5s, 25m, 5h3m, 2d4h, 3y."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 120:
        return f"{max(s, 0)}s"
    minutes, hours, days = s // 60, s // 3600, s // 86400
    if minutes < 10:
        return _two(minutes, "m", s % 60, "s")
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return _two(hours, "h", minutes % 60, "m")
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return _two(days, "d", hours % 24, "h")
    if hours < 24 * 365 * 2:
        return f"{days}d"
    if hours < 24 * 365 * 8:
        return _two(days // 365, "y", days % 365, "d")
    return f"{days // 365}y"


def _two(major: int, major_unit: str, minor: int, minor_unit: str) -> str:
    return f"{major}{major_unit}{minor}{minor_unit}" if minor else f"{major}{major_unit}"


def timestamp(now: float) -> str:
    """metadata.creationTimestamp as the API server writes it (RFC 3339, seconds, UTC)."""
    return datetime.fromtimestamp(int(now), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def age(obj: Mapping[str, Any], now: float) -> str:
    """AGE from metadata.creationTimestamp; `<unknown>` without one, as kubectl prints."""
    meta = obj.get("metadata")
    created = meta.get("creationTimestamp") if isinstance(meta, Mapping) else None
    try:
        when = datetime.fromisoformat(str(created)).timestamp()
    except ValueError:
        return "<unknown>"
    return human_duration(now - when)


# -- the store and the edge -----------------------------------------------------------


class CtlError(Exception):
    """One line for the user, and the exit code (1 runtime, 2 usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@contextlib.contextmanager
def opened(args: argparse.Namespace) -> Iterator[ObjectStore]:
    """The store tartand's flags name (backends.agent.add_store_flags), closed after."""
    from tartan.backends.agent import StartupError, open_store

    try:
        store = open_store(args)
    except StartupError as exc:
        raise CtlError(str(exc), 2) from None
    objects: Any = store  # every LeaseStore implementation is also an ObjectStore
    try:
        yield objects
    finally:
        store.close()


def edge(prog: str) -> Callable[[Run], Run]:
    """`run` with every failure as one line `<prog>: <message>` on stderr and exit code 1
    (2 for usage), never a traceback."""
    from tartan.ipam.lease import StoreUnavailable, StoreUnusable

    def wrap(run: Run) -> Run:
        @functools.wraps(run)
        def wrapper(args: argparse.Namespace) -> int:
            try:
                return run(args)
            except CtlError as exc:
                return fail(prog, str(exc), exc.code)
            except (StoreUnavailable, StoreUnusable, ManifestError, InvalidObjectKey) as exc:
                return fail(prog, str(exc))
            except BrokenPipeError:
                raise  # ctl.main ends quietly
            except Exception as exc:  # the edge: one line, never a traceback
                return fail(prog, f"{type(exc).__name__}: {exc}")

        return wrapper

    return wrap


def fail(prog: str, message: str, code: int = 1) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return code
