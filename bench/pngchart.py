"""A tiny standard-library-only bar chart written as a PNG (zlib + struct, no matplotlib).

A `Canvas` holds RGB pixels and knows rectangles and a 5x7 bitmap font (upper case, digits,
a few signs; text is drawn upper-cased). `bar_chart` draws horizontal stacked bars with an
optional whisker per bar, in panels that each have their own scale: enough for a benchmark
report that a person views as an image.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GREY: Color = (200, 200, 200)
PALETTE: tuple[Color, ...] = ((66, 114, 196), (237, 125, 49), (112, 173, 71), (165, 165, 165))

# 5x7 glyphs: seven rows, each a 5-bit number (left pixel = 0x10), as hex pairs.
_FONT_HEX = {
    "0": "0E11131519110E", "1": "040C040404040E", "2": "0E11010204081F",
    "3": "1F02040201110E", "4": "02060A121F0202", "5": "1F101E0101110E",
    "6": "0608101E11110E", "7": "1F010204080808", "8": "0E11110E11110E",
    "9": "0E11110F01020C", "A": "0E1111111F1111", "B": "1E11111E11111E",
    "C": "0E11101010110E", "D": "1C12111111121C", "E": "1F10101E10101F",
    "F": "1F10101E101010", "G": "0E11101711110F", "H": "1111111F111111",
    "I": "0E04040404040E", "J": "0702020202120C", "K": "11121418141211",
    "L": "1010101010101F", "M": "111B1515111111", "N": "11111915131111",
    "O": "0E11111111110E", "P": "1E11111E101010", "Q": "0E11111115120D",
    "R": "1E11111E141211", "S": "0F10100E01011E", "T": "1F040404040404",
    "U": "1111111111110E", "V": "11111111110A04", "W": "1111111515150A",
    "X": "11110A040A1111", "Y": "1111110A040404", "Z": "1F01020408101F",
    " ": "00000000000000", ".": "00000000000C0C", "-": "0000001F000000",
    "+": "0004041F040400", "/": "00010204081000", ":": "000C0C000C0C00",
    "(": "02040808080402", ")": "08040202020408", "%": "18190204081303",
    "=": "00001F001F0000", "_": "0000000000001F", ",": "000000000C0408",
}
FONT = {ch: bytes.fromhex(code) for ch, code in _FONT_HEX.items()}


@dataclass
class Canvas:
    width: int
    height: int
    pixels: bytearray = field(init=False)

    def __post_init__(self) -> None:
        self.pixels = bytearray(WHITE * (self.width * self.height))

    def rect(self, x: int, y: int, w: int, h: int, color: Color) -> None:
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(self.width, x + w), min(self.height, y + h)
        if x1 <= x0:
            return
        row = bytes(color) * (x1 - x0)
        for yy in range(y0, y1):
            start = (yy * self.width + x0) * 3
            self.pixels[start:start + len(row)] = row

    def text(self, x: int, y: int, text: str, scale: int = 2, color: Color = BLACK) -> None:
        for i, ch in enumerate(text.upper()):
            glyph = FONT.get(ch, FONT[" "])
            self._glyph(x + i * 6 * scale, y, glyph, scale, color)

    def _glyph(self, x: int, y: int, glyph: bytes, scale: int, color: Color) -> None:
        for row, bits in enumerate(glyph):
            for col in range(5):
                if bits & (0x10 >> col):
                    self.rect(x + col * scale, y + row * scale, scale, scale, color)

    def png(self) -> bytes:
        stride = self.width * 3
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * stride:(y + 1) * stride]) for y in range(self.height)
        )
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
                + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def text_width(text: str, scale: int = 2) -> int:
    return len(text) * 6 * scale


def nice_step(maximum: float, ticks: int = 5) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about `ticks` ticks."""
    if maximum <= 0:
        return 1.0
    raw = maximum / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


@dataclass
class Bar:
    label: str
    segments: tuple[float, ...]  # stacked, left to right, in PALETTE order
    whisker: float | None = None
    note: str = ""  # printed right of the bar


@dataclass
class Panel:
    title: str
    bars: list[Bar]
    legend: tuple[str, ...] = ()


@dataclass
class Layout:
    width: int = 1000
    label_width: int = 300
    right_margin: int = 130
    bar_height: int = 22
    bar_gap: int = 10
    scale: int = 2

    @property
    def plot_width(self) -> int:
        return self.width - self.label_width - self.right_margin


def _panel_height(panel: Panel, lay: Layout) -> int:
    return 40 + (24 if panel.legend else 0) + len(panel.bars) * (lay.bar_height + lay.bar_gap) + 40


def _axis(canvas: Canvas, lay: Layout, y_top: int, y_bottom: int, maximum: float) -> float:
    """Draw grid lines and tick labels; return pixels per unit."""
    step = nice_step(maximum)
    top = step * math.ceil(maximum / step)
    per_unit = lay.plot_width / top
    value = 0.0
    while value <= top + step / 2:
        x = lay.label_width + round(value * per_unit)
        canvas.rect(x, y_top, 1, y_bottom - y_top, GREY)
        label = f"{value:g}"
        canvas.text(x - text_width(label, lay.scale) // 2, y_bottom + 4, label, lay.scale)
        value += step
    return per_unit


def _legend(canvas: Canvas, lay: Layout, y: int, names: tuple[str, ...]) -> None:
    x = lay.label_width
    for color, name in zip(PALETTE, names, strict=False):
        canvas.rect(x, y, 14, 14, color)
        canvas.text(x + 20, y, name, lay.scale)
        x += 20 + text_width(name, lay.scale) + 30


def _bar(canvas: Canvas, lay: Layout, y: int, bar: Bar, per_unit: float) -> None:
    canvas.text(10, y + (lay.bar_height - 7 * lay.scale) // 2, bar.label, lay.scale)
    x = lay.label_width
    for color, value in zip(PALETTE, bar.segments, strict=False):
        w = max(1, round(value * per_unit))
        canvas.rect(x, y, w, lay.bar_height, color)
        x += w
    if bar.whisker is not None:
        wx = lay.label_width + round(bar.whisker * per_unit)
        mid = y + lay.bar_height // 2
        canvas.rect(min(x, wx), mid, abs(wx - x) + 1, 2, BLACK)
        canvas.rect(wx, y + 3, 2, lay.bar_height - 6, BLACK)
        x = max(x, wx)
    if bar.note:
        canvas.text(x + 12, y + (lay.bar_height - 7 * lay.scale) // 2, bar.note, lay.scale)


def _panel(canvas: Canvas, lay: Layout, y: int, panel: Panel) -> int:
    canvas.text(10, y + 10, panel.title, lay.scale)
    y += 40
    if panel.legend:
        _legend(canvas, lay, y, panel.legend)
        y += 24
    bottom = y + len(panel.bars) * (lay.bar_height + lay.bar_gap)
    maximum = max((max(sum(b.segments), b.whisker or 0.0) for b in panel.bars), default=1.0)
    per_unit = _axis(canvas, lay, y - 4, bottom, maximum)
    for i, bar in enumerate(panel.bars):
        _bar(canvas, lay, y + i * (lay.bar_height + lay.bar_gap), bar, per_unit)
    return bottom + 40


def bar_chart(panels: list[Panel], path: Path, layout: Layout | None = None) -> None:
    """Render `panels` one below the other into a PNG at `path`."""
    lay = layout or Layout()
    canvas = Canvas(lay.width, sum(_panel_height(p, lay) for p in panels) + 10)
    y = 0
    for panel in panels:
        y = _panel(canvas, lay, y, panel)
    path.write_bytes(canvas.png())
