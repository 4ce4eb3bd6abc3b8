"""Fields of Kubernetes objects read and checked as the API server checks them (for `manifest`
and `manifest_policy`).

Each reader takes a decoded value and its field's path (`spec.ingress[0].ports[1].port`) and
returns the value typed, or raises `Invalid` with a `Problem` at that path: a message that
names the bad value and the fix. `Gather` goes on past a bad part, so that every problem of an
object is reported at once. Names, label keys and values, and port names are checked as
apimachinery checks them (DNS-1123 labels and subdomains, qualified names, IANA_SVC_NAME); the
`is_*` and `*_problem` functions say whether and why a string is not one, without raising.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NoReturn, TypeVar, cast

from tartan.netpol.model import IPAddress, IPNetwork, Protocol

T = TypeVar("T")
Object = Mapping[str, object]


# -- problems -------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    field: str
    detail: str


class Invalid(Exception):
    def __init__(self, *problems: Problem) -> None:
        super().__init__(*problems)
        self.problems = problems


def fail(path: str, detail: str) -> NoReturn:
    raise Invalid(Problem(path, detail))


class Gather:
    """Builds the parts of one object, going on past invalid ones so that every problem
    is reported at once."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def get(self, build: Callable[[], T], fallback: object) -> T:
        """What `build` returns, or (when it finds problems) `fallback`, a stand-in of the
        same shape that lives only until check() raises."""
        try:
            return build()
        except Invalid as invalid:
            self.problems.extend(invalid.problems)
            return cast(T, fallback)

    def check(self) -> None:
        if self.problems:
            raise Invalid(*self.problems)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def kind_of(value: object) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a decimal number",
             str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), f"a {type(value).__name__}")


def show(value: object) -> str:
    """A value as the message shows it: strings quoted (and shortened), containers by kind."""
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 70 else value[:67] + "...")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    return kind_of(value)


def wrong_type(value: object, path: str, expected: str) -> NoReturn:
    scalar = isinstance(value, bool | int | float | str)
    seen = kind_of(value) + (f" ({show(value)})" if scalar and value != "" else "")
    if expected == "a string" and scalar:
        fix = "quote it"
    elif isinstance(value, str) and value.isdigit() and "number" in expected:
        fix = f"remove the quotes: {value}"
    else:
        fix = f"write {expected} here"
    fail(path, f"must be {expected}, not {seen}; {fix}")


# -- shapes ---------------------------------------------------------------------------


def fields(raw: object, path: str, known: Sequence[str] | None = None) -> Object:
    """The object at `path` (null is an empty one); with `known`, other fields are errors."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        wrong_type(raw, path, "an object")
    odd = [key for key in raw if not isinstance(key, str)]
    if odd:
        fail(path or "the object", f"has the key {show(odd[0])}, which is not a string; "
             f'quote it: "{odd[0]}"')
    unknown = [] if known is None else [key for key in raw if key not in known]
    if unknown and known:
        raise Invalid(*(Problem(join(path, key), "is not a known field; use one of "
                                + ", ".join(known)) for key in unknown))
    return raw


def as_list(raw: object, path: str) -> list[object]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        wrong_type(raw, path, "a list")
    return raw


def items(raw: object, path: str, build: Callable[[object, str], T]) -> tuple[T, ...]:
    """Each element built, all elements' problems reported together."""
    gather = Gather()
    built = [gather.get(partial(build, item, f"{path}[{index}]"), None)
             for index, item in enumerate(as_list(raw, path))]
    gather.check()
    return tuple(item for item in built if item is not None)


def string(raw: object, path: str) -> str:
    if not isinstance(raw, str):
        wrong_type(raw, path, "a string")
    return raw


def integer(raw: object, path: str, expected: str = "a number") -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        wrong_type(raw, path, expected)
    return raw


def boolean(raw: object, path: str) -> bool:
    if raw is not None and not isinstance(raw, bool):
        wrong_type(raw, path, "true or false")
    return bool(raw)


def required(obj: Object, key: str, path: str, fix: str) -> object:
    value = obj.get(key)
    if value is None:
        fail(join(path, key), f"is required; {fix}")
    return value


def choice(raw: object, path: str, choices: Sequence[str], what: str) -> str:
    """One of `choices`, spelt exactly: the API's enumerations are case-sensitive."""
    text = string(raw, path)
    if text in choices:
        return text
    same = [option for option in choices if option.lower() == text.lower()]
    fix = f"write it as {same[0]} (the case matters)" if same else f"use {either(choices)}"
    fail(path, f"{show(text)} is not {what}; {fix}")


def either(choices: Sequence[str]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


# -- names and labels, as apimachinery's validation defines them ----------------------


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_CHARS = re.compile(r"[-A-Za-z0-9_.]*")
_ALNUM = re.compile(r"[A-Za-z0-9]")
_PORT_NAME_CHARS = re.compile(r"[-a-z0-9]+")
_LABEL_RULE = ("at most 63 letters, digits, '-', '_' and '.', starting and ending with a "
               "letter or digit")


def is_dns_label(name: str) -> bool:
    return len(name) <= 63 and _DNS_LABEL.fullmatch(name) is not None


def is_dns_subdomain(name: str) -> bool:
    return len(name) <= 253 and _DNS_SUBDOMAIN.fullmatch(name) is not None


def label_name_problem(name: str, what: str) -> str | None:
    if len(name) > 63:
        return f"{what} is {len(name)} characters long"
    if not _LABEL_CHARS.fullmatch(name):
        return f"{what} has characters other than letters, digits, '-', '_' and '.'"
    if name and not (_ALNUM.match(name[0]) and _ALNUM.match(name[-1])):
        return f"{what} does not start and end with a letter or digit"
    return None


def label_key_problem(key: str) -> str | None:
    parts = key.split("/")
    if len(parts) > 2:
        return "it has more than one '/'"
    if len(parts) == 2 and not is_dns_subdomain(parts[0]):
        return f"its prefix {show(parts[0])} is not a DNS subdomain"
    if not parts[-1]:
        return "its name is empty"
    return label_name_problem(parts[-1], "its name")


def port_name_problem(name: str) -> str | None:
    """Why `name` is not an IANA_SVC_NAME, the form of container port names."""
    if len(name) > 15:
        return "it is longer than 15 characters"
    if not _PORT_NAME_CHARS.fullmatch(name):
        return "it has characters other than lower-case letters, digits and '-'"
    if not re.search("[a-z]", name):
        return "it has no letter"
    if "--" in name or name[0] == "-" or name[-1] == "-":
        return "it starts or ends with '-' or has '--'"
    return None


def label_key(raw: object, path: str) -> str:
    key = string(raw, path)
    problem = label_key_problem(key)
    if problem:
        fail(path, f"{show(key)} is not a valid label key: {problem}; use an optional DNS "
             f"subdomain prefix and '/', then a name of {_LABEL_RULE}")
    return key


def label_value(raw: object, path: str) -> str:
    value = string(raw, path)
    problem = label_name_problem(value, "it")
    if problem:
        fail(path, f"{show(value)} is not a valid label value: {problem}; use {_LABEL_RULE}")
    return value


def label_map(raw: object, path: str) -> dict[str, str]:
    gather = Gather()
    pairs = [gather.get(partial(_label, key, value, f"{path}[{json.dumps(key)}]"), ("", ""))
             for key, value in fields(raw, path).items()]
    gather.check()
    return dict(pairs)


def _label(key: str, value: object, path: str) -> tuple[str, str]:
    gather = Gather()
    gather.get(partial(label_key, key, path), "")
    text = gather.get(partial(label_value, value, path), "")
    gather.check()
    return key, text


def object_name(raw: object, path: str, subdomain: bool) -> str:
    if raw is None or raw == "":
        fail(path, "is required; give the object a name")
    name = string(raw, path)
    if subdomain and not is_dns_subdomain(name):
        fail(path, f"{show(name)} is not a DNS subdomain; use at most 253 lower-case "
             "letters, digits, '-' and '.', starting and ending with a letter or digit")
    if not subdomain and not is_dns_label(name):
        fail(path, f"{show(name)} is not a DNS label; use at most 63 lower-case letters, "
             "digits and '-', starting and ending with a letter or digit")
    return name


def metadata(obj: Object, namespaced: bool, subdomain: bool) -> tuple[str, str, dict[str, str]]:
    """(namespace, name, labels); the namespace is "default" when not given."""
    meta = fields(obj.get("metadata"), "metadata")
    gather = Gather()
    name = gather.get(partial(object_name, meta.get("name"), "metadata.name", subdomain), "")
    namespace = ""
    if namespaced:
        raw = meta.get("namespace")
        namespace = "default" if raw is None or raw == "" else gather.get(
            partial(object_name, raw, "metadata.namespace", False), "")
    labels = gather.get(partial(label_map, meta.get("labels"), "metadata.labels"), {})
    gather.check()
    return namespace, name, labels


def port_protocol(raw: object, path: str) -> Protocol:
    if raw is None:
        return Protocol.TCP
    return Protocol(choice(raw, path, list(Protocol), "a supported protocol"))


def port_name(raw: object, path: str) -> str:
    if raw is None:
        return ""
    name = string(raw, path)
    problem = port_name_problem(name)
    if problem:
        digits = f", or write {name} without quotes for a number" if name.isdigit() else ""
        fail(path, f"{show(name)} is not a valid port name: {problem}; use at most 15 "
             f"lower-case letters, digits and single '-' inside, with a letter{digits}")
    return name


# -- numbers and addresses ------------------------------------------------------------


def port_number(raw: object, path: str) -> int:
    number = integer(raw, path, "a port number")
    if not 1 <= number <= 65535:
        fail(path, f"{number} is out of range; use a port from 1 to 65535")
    return number


def address(raw: object, path: str) -> IPAddress:
    text = string(raw, path)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        fail(path, f"{show(text)} is not an IP address; write e.g. 10.244.1.5 or fd00::5")


_CIDR_FORM = re.compile(r"[0-9A-Fa-f:.]+/[0-9]{1,3}")


def network(raw: object, path: str) -> IPNetwork:
    """A network in CIDR notation; host bits are allowed (and cleared), as the API allows."""
    text = string(raw, path)
    try:
        if not _CIDR_FORM.fullmatch(text):
            raise ValueError(text)
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        fail(path, f"{show(text)} is not a CIDR; write an address and a prefix length, "
             "e.g. 10.0.0.0/16 or fd00::/64")
