"""Plain-text output helpers shared by tartanctl's subcommands."""

from __future__ import annotations

from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "") -> list[str]:
    """Left-aligned columns, two spaces apart; "-" for empty cells."""
    cells = [[str(c) if c not in (None, "") else "-" for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return indent + "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return [line(headers), *map(line, cells)]


def relative(seconds: float) -> str:
    """A duration from now: 'in 23h 59m', '5m 3s ago', 'in 12s'."""
    ago = seconds < 0
    left = int(abs(seconds))
    days, left = divmod(left, 86400)
    hours, left = divmod(left, 3600)
    minutes, secs = divmod(left, 60)
    parts = [f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")) if v]
    text = " ".join(parts[:2]) or "0s"
    return f"{text} ago" if ago else f"in {text}"
