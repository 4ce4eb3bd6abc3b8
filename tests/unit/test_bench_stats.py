"""The CNI latency benchmark's statistics, tables and PNG writer (no root, no kernel)."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from latency_stats import (
    PairSeries,
    Stats,
    markdown,
    pair_table,
    percentile,
    plain,
    ratio,
)
from pngchart import Bar, Canvas, Panel, bar_chart, nice_step


def test_percentile_interpolates_between_order_statistics():
    data = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(data, 0.5) == 3.0
    assert percentile(data, 0.0) == 1.0
    assert percentile(data, 1.0) == 5.0
    assert percentile(data, 0.95) == pytest.approx(4.8)
    assert percentile([7.0], 0.95) == 7.0


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_stats_median_of_even_count_is_the_midpoint():
    assert Stats.of([1.0, 2.0, 3.0, 10.0]) == Stats(2.5, pytest.approx(8.95))


def test_pair_is_add_plus_del_of_the_same_pod():
    series = PairSeries("tartan", "masq", add=[1.0, 2.0], delete=[10.0, 20.0])
    assert series.pair == [11.0, 22.0]


def _results() -> list[PairSeries]:
    return [
        PairSeries("tartan", "masq", add=[30.0, 30.0], delete=[30.0, 30.0]),
        PairSeries("reference", "masq", add=[10.0, 10.0], delete=[10.0, 10.0]),
        PairSeries("tartan", "nomasq", add=[5.0, 5.0], delete=[5.0, 5.0]),
    ]


def test_ratio_is_tartan_over_reference_pair_medians_per_mode():
    results = _results()
    assert ratio(results, "masq") == pytest.approx(3.0)
    assert ratio(results, "nomasq") is None


def test_pair_table_puts_the_ratio_on_the_tartan_row():
    rows = pair_table(_results())
    assert rows[0][0] == "impl" and rows[0][-1] == "Tartan/ref"
    assert rows[1][-1] == "3.00x"
    assert rows[2][-1] == ""
    assert rows[1][6] == "60.0"


def test_plain_and_markdown_render_every_row():
    rows = pair_table(_results())
    text = plain(rows).splitlines()
    assert len(text) == len(rows)
    assert text[1].startswith("tartan     masq")
    md = markdown(rows).splitlines()
    assert md[1].startswith("| --- | --- | ---: |")
    assert len(md) == len(rows) + 1


def test_nice_step_is_one_two_or_five_times_a_power_of_ten():
    assert nice_step(400) == 100
    assert nice_step(33) == 10
    assert nice_step(9) == 2
    assert nice_step(0) == 1.0


def _decode_png(data: bytes) -> tuple[int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return size[0], size[1], zlib.decompress(idat)


def test_canvas_writes_a_valid_png_with_the_pixels_drawn():
    canvas = Canvas(4, 3)
    canvas.rect(1, 1, 2, 1, (10, 20, 30))
    width, height, raw = _decode_png(canvas.png())
    assert (width, height) == (4, 3)
    assert len(raw) == 3 * (1 + 4 * 3)
    row1 = raw[13:26]
    assert row1[0] == 0 and row1[4:10] == bytes([10, 20, 30, 10, 20, 30])
    assert row1[1:4] == b"\xff\xff\xff"


def test_bar_chart_renders_panels_to_a_file(tmp_path):
    path = tmp_path / "chart.png"
    bars = [Bar("tartan masq", (150.0, 180.0), 350.0, "330 ms"), Bar("reference", (20.0, 80.0))]
    bar_chart([Panel("pairs", bars, ("ADD", "DEL")), Panel("starts", [Bar("python", (8.0,))])],
              path)
    width, height, raw = _decode_png(path.read_bytes())
    assert width == 1000 and height > 200
    assert len(raw) == height * (1 + width * 3)
