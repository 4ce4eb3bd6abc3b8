"""Statistics and tables for the CNI latency benchmark: pure functions, no kernel, no root."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation between order statistics."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class Stats:
    median: float
    p95: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        return cls(percentile(samples, 0.5), percentile(samples, 0.95))


@dataclass
class PairSeries:
    """ADD and DEL times (ms) of one implementation in one mode, one entry per pair."""

    impl: str
    mode: str
    add: list[float] = field(default_factory=list)
    delete: list[float] = field(default_factory=list)

    @property
    def pair(self) -> list[float]:
        return [a + d for a, d in zip(self.add, self.delete, strict=True)]


@dataclass
class StartSeries:
    """Process start costs (ms): exec + VERSION of a plugin, or a bare interpreter."""

    label: str
    samples: list[float]


def ratio(results: Sequence[PairSeries], mode: str, impl: str = "tartan") -> float | None:
    """A Tartan implementation's pair median over the reference's, in one mode (None if
    either is missing)."""
    medians = {s.impl: Stats.of(s.pair).median for s in results if s.mode == mode}
    if impl not in medians or impl == "reference" or not medians.get("reference"):
        return None
    return medians[impl] / medians["reference"]


def pair_table(results: Sequence[PairSeries]) -> list[list[str]]:
    rows = [["impl", "mode", "ADD med", "ADD p95", "DEL med", "DEL p95", "pair med",
             "pair p95", "Tartan/ref"]]
    for s in results:
        add, delete, pair = Stats.of(s.add), Stats.of(s.delete), Stats.of(s.pair)
        r = ratio(results, s.mode, s.impl)
        rows.append([s.impl, s.mode, *(f"{v:.1f}" for v in (add.median, add.p95, delete.median,
                                                              delete.p95, pair.median, pair.p95)),
                     f"{r:.2f}x" if r is not None else ""])
    return rows


def start_table(starts: Sequence[StartSeries]) -> list[list[str]]:
    rows = [["process", "median", "p95"]]
    for s in starts:
        st = Stats.of(s.samples)
        rows.append([s.label, f"{st.median:.1f}", f"{st.p95:.1f}"])
    return rows


def _numeric(cell: str) -> bool:
    try:
        float(cell.rstrip("x") or "0")
    except ValueError:
        return False
    return True


def _left_columns(rows: list[list[str]]) -> int:
    """Label columns (left-aligned) come first: the leading columns that are not numbers."""
    count = 0
    for i in range(len(rows[0])):
        if all(_numeric(r[i]) for r in rows[1:]):
            break
        count += 1
    return count


def plain(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    left = _left_columns(rows)
    return "\n".join(
        "  ".join(c.ljust(w) if i < left else c.rjust(w)
                  for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
        for r in rows
    )


def markdown(rows: list[list[str]]) -> str:
    head, *body = rows
    left = _left_columns(rows)
    align = ["---" if i < left else "---:" for i in range(len(head))]
    return "\n".join("| " + " | ".join(r) + " |" for r in [head, align, *body])
