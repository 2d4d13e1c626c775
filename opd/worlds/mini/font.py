"""Fixed bitmap fonts of the mini world: a 3x5 font (16 px images) and a 5x7 font (24 px and up).

Every glyph has ink in each of its rows and in its first and last columns, so a rendered line
splits into glyphs at its empty columns and each glyph's box is exactly its cell. The default
alphabet (``WorldConfig.alphabet``) was chosen among these letters to maximise the smallest
Hamming distance between glyphs (5 pixels in the 3x5 font, more in the 5x7 one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np

_FONT_3X5: dict[str, str] = {
    "A": ".#./#.#/###/#.#/#.#",
    "C": ".##/#../#../#../.##",
    "D": "##./#.#/#.#/#.#/##.",
    "E": "###/#../##./#../###",
    "F": "###/#../##./#../#..",
    "H": "#.#/#.#/###/#.#/#.#",
    "J": "..#/..#/..#/#.#/.#.",
    "K": "#.#/#.#/##./#.#/#.#",
    "L": "#../#../#../#../###",
    "M": "#.#/###/#.#/#.#/#.#",
    "N": "##./#.#/#.#/#.#/#.#",
    "O": ".#./#.#/#.#/#.#/.#.",
    "P": "##./#.#/##./#../#..",
    "R": "##./#.#/##./#.#/#.#",
    "S": ".##/#../.#./..#/##.",
    "T": "###/.#./.#./.#./.#.",
    "U": "#.#/#.#/#.#/#.#/###",
    "V": "#.#/#.#/#.#/#.#/.#.",
    "X": "#.#/#.#/.#./#.#/#.#",
    "Y": "#.#/#.#/.#./.#./.#.",
    "Z": "###/..#/.#./#../###",
}

_FONT_5X7: dict[str, str] = {
    "A": ".###./#...#/#...#/#####/#...#/#...#/#...#",
    "C": ".####/#..../#..../#..../#..../#..../.####",
    "D": "####./#...#/#...#/#...#/#...#/#...#/####.",
    "E": "#####/#..../#..../####./#..../#..../#####",
    "F": "#####/#..../#..../####./#..../#..../#....",
    "H": "#...#/#...#/#...#/#####/#...#/#...#/#...#",
    "J": "..###/....#/....#/....#/#...#/#...#/.###.",
    "K": "#...#/#..#./#.#../##.../#.#../#..#./#...#",
    "L": "#..../#..../#..../#..../#..../#..../#####",
    "M": "#...#/##.##/#.#.#/#.#.#/#...#/#...#/#...#",
    "N": "#...#/##..#/#.#.#/#..##/#...#/#...#/#...#",
    "O": ".###./#...#/#...#/#...#/#...#/#...#/.###.",
    "P": "####./#...#/#...#/####./#..../#..../#....",
    "R": "####./#...#/#...#/####./#.#../#..#./#...#",
    "S": ".####/#..../#..../.###./....#/....#/####.",
    "T": "#####/..#../..#../..#../..#../..#../..#..",
    "U": "#...#/#...#/#...#/#...#/#...#/#...#/.###.",
    "V": "#...#/#...#/#...#/#...#/#...#/.#.#./..#..",
    "X": "#...#/#...#/.#.#./..#../.#.#./#...#/#...#",
    "Y": "#...#/#...#/.#.#./..#../..#../..#../..#..",
    "Z": "#####/....#/...#./..#../.#.../#..../#####",
}

_SOURCES = {"3x5": _FONT_3X5, "5x7": _FONT_5X7}
FONT_NAMES: tuple[str, ...] = tuple(_SOURCES)


@dataclass(frozen=True)
class Font:
    """A fixed-pitch bitmap font: ``glyphs[c]`` is a bool array (height, width)."""

    name: str
    height: int
    width: int
    gap: int
    glyphs: dict[str, np.ndarray] = field(repr=False)

    @property
    def pitch(self) -> int:
        """Horizontal distance between the left edges of consecutive glyphs."""
        return self.width + self.gap

    def text_width(self, n: int) -> int:
        """Width in pixels of a line of ``n`` glyphs."""
        return max(0, n * self.width + (n - 1) * self.gap)

    def stack(self, alphabet: str) -> np.ndarray:
        """Bitmaps of ``alphabet``'s glyphs as a bool array (len(alphabet), height, width)."""
        return np.stack([self.glyphs[c] for c in alphabet])


def _parse(rows: str) -> np.ndarray:
    return np.array([[ch == "#" for ch in row] for row in rows.split("/")], dtype=bool)


@cache
def get_font(name: str) -> Font:
    """The font called ``name``: one of :data:`FONT_NAMES`, or ``"<font>x<k>"`` for that font
    scaled ``k`` times (each pixel a k x k block, gap k: ``"3x5x2"`` draws 6x10 glyphs)."""
    base, scale = name, 1
    if name not in _SOURCES and name.count("x") == 2:
        base, _, k = name.rpartition("x")
        scale = int(k) if k.isdigit() else 0
    if base not in _SOURCES or scale < 1:
        raise KeyError(
            f"unknown font {name!r}; known: {', '.join(FONT_NAMES)}, or one scaled as '3x5x2'"
        )
    block = np.ones((scale, scale), dtype=bool)
    glyphs = {c: np.kron(_parse(s), block).astype(bool) for c, s in _SOURCES[base].items()}
    h, w = next(iter(glyphs.values())).shape
    for c, g in glyphs.items():
        if g.shape != (h, w) or not (g.any(1).all() and g[:, 0].any() and g[:, -1].any()):
            raise AssertionError(f"glyph {c!r} of font {name} breaks the font's layout rules")
    return Font(name=name, height=h, width=w, gap=scale, glyphs=glyphs)


def font_for_resolution(resolution: int) -> str:
    """The font used at ``resolution`` when the config names none: 3x5 below 20 px, else 5x7."""
    return "3x5" if resolution < 20 else "5x7"
