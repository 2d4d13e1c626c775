"""``text``: the mini world's OCR, a template-matching reader over the world's bitmap font.

Reader, per image:

1. Ink: pixels darker than the midpoint between the image's median luminance (the background)
   and its darkest low-chroma pixel, with chroma below ``chroma_max`` (coloured objects are not
   ink). No ink when that darkest pixel is less than ``min_contrast`` below the median.
2. Line: the run of consecutive ink rows holding the most ink; if taller than a glyph, the
   glyph-high window in it with the most ink.
3. Glyphs: the line splits at empty columns (every glyph of the font touches both its side
   columns, so a clean line splits exactly into glyphs); a run wider than one glyph is cut into
   ``round((width + gap) / pitch)`` cells; runs with fewer than 2 ink pixels are noise.
4. Each cell is compared with every glyph template at offsets of -1..1 px (pixel agreement);
   the best glyph is read, or ``?`` when its agreement is below ``reject`` (garbage counts as
   a wrong character).

Score (the paper's OCR metric): ``1 - min(lev(pred, target), len(target)) / len(target)`` with
the target from ``metadata["text"]`` or the prompt's double-quoted string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from opd.registry import SCORERS
from opd.worlds.mini import DEFAULT_CONFIG, Font, WorldConfig, get_font, quoted_text
from opd.worlds.mini.font import font_for_resolution

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def text_score(pred: str, target: str) -> float:
    """``1 - min(lev(pred, target), len(target)) / len(target)``; an empty target scores 1 only
    for an empty reading."""
    if not target:
        return float(pred == "")
    return 1.0 - min(levenshtein(pred, target), len(target)) / len(target)


class TextReader:
    """Reads the single text line of mini-world images (see module doc)."""

    def __init__(
        self,
        config: WorldConfig | None = None,
        font: str | None = None,
        min_contrast: float = 40.0,
        chroma_max: float = 40.0,
        reject: float = 0.75,
    ) -> None:
        self.config = config or DEFAULT_CONFIG
        self.font_name = font
        self.min_contrast = float(min_contrast)
        self.chroma_max = float(chroma_max)
        self.reject = float(reject)

    def font_for(self, resolution: int) -> Font:
        name = self.font_name or self.config.font or font_for_resolution(resolution)
        return get_font(name)

    def ink(self, images: np.ndarray) -> np.ndarray:
        """Ink mask, bool (N, H, W)."""
        x = np.asarray(images).astype(np.float32)
        lum = x @ _LUMA
        chroma = x.max(-1) - x.min(-1)
        n = len(x)
        flat_l = lum.reshape(n, -1)
        grey = (chroma <= self.chroma_max).reshape(n, -1)
        median = np.median(flat_l, axis=1)
        darkest = np.where(grey, flat_l, np.inf).min(1)
        has = median - darkest >= self.min_contrast
        thr = (median + darkest) / 2
        return (lum < thr[:, None, None]) & (chroma <= self.chroma_max) & has[:, None, None]

    def read(self, images: np.ndarray) -> list[str]:
        """The text each image shows ("" when none)."""
        images = np.asarray(images)
        if len(images) == 0:
            return []
        font = self.font_for(images.shape[1])
        alphabet = self.config.alphabet
        templates = font.stack(alphabet)  # (A, gh, gw)
        ink = self.ink(images)
        owners: list[int] = []
        cells: list[np.ndarray] = []
        for i, m in enumerate(ink):
            found = self._cells(m, font)
            owners.extend([i] * len(found))
            cells.extend(found)
        out = [""] * len(images)
        if not cells:
            return out
        # Agreement of every cell (at 9 offsets) with every glyph: (cells, 9, A).
        stack = np.stack(cells)
        agree = (stack[:, :, None] == templates[None, None]).mean((3, 4))
        best = agree.max(1)
        idx = best.argmax(1)
        ok = best[np.arange(len(idx)), idx] >= self.reject
        chars = ["?"] * len(idx)
        for j in np.nonzero(ok)[0]:
            chars[j] = alphabet[idx[j]]
        for i, c in zip(owners, chars, strict=True):
            out[i] += c
        return out

    def _cells(self, ink: np.ndarray, font: Font) -> list[np.ndarray]:
        """Glyph cells of the image's text line, each as the 9 shifted (gh, gw) windows
        around it (offsets -1..1 px), in reading order."""
        gh, gw = font.height, font.width
        rows = ink.sum(1)
        if rows.sum() == 0:
            return []
        # Runs of consecutive ink rows; keep the one with the most ink.
        on = np.concatenate([[0], (rows > 0).astype(np.int8), [0]])
        starts = np.nonzero(np.diff(on) == 1)[0]
        stops = np.nonzero(np.diff(on) == -1)[0]
        mass = np.array([rows[a:b].sum() for a, b in zip(starts, stops, strict=True)])
        a, b = int(starts[mass.argmax()]), int(stops[mass.argmax()])
        if b - a > gh:
            window = np.convolve(rows[a:b], np.ones(gh, dtype=np.int64), mode="valid")
            a = a + int(window.argmax())
            b = a + gh
        band = ink[a:b]
        w = ink.shape[1]
        # Padding: the band sits at row 1 and column 2, so shifted cells never leave the array.
        pad = np.zeros((gh + 2, w + gw + 4), dtype=bool)
        pad[1 : 1 + band.shape[0], 2 : 2 + w] = band
        on = np.concatenate([[0], band.any(0).astype(np.int8), [0]])
        starts = np.nonzero(np.diff(on) == 1)[0]
        stops = np.nonzero(np.diff(on) == -1)[0]
        windows = np.lib.stride_tricks.sliding_window_view(pad, (gh, gw))  # (3, W', gh, gw)
        out: list[np.ndarray] = []
        for s, e in zip(starts, stops, strict=True):
            if band[:, s:e].sum() < 2:
                continue
            width = int(e - s)
            k = max(1, round((width + font.gap) / font.pitch))
            for j in range(k):
                x0 = s + (round(j * (width - gw) / (k - 1)) if k > 1 else (width - gw) // 2)
                x0 = min(max(int(x0) + 2, 1), windows.shape[1] - 2)
                out.append(windows[:, x0 - 1 : x0 + 2].reshape(9, gh, gw))
        return out


def _target(prompt: str, meta: dict[str, Any] | None) -> str:
    if meta and "text" in meta:
        return str(meta["text"])
    text = quoted_text(prompt or "")
    if text is None:
        raise ValueError(f"no text target in metadata or prompt {prompt!r}")
    return text


class TextScorer:
    """``(images, prompts, metadata) -> (N,)`` OCR accuracy ``1 - min(lev, len)/len``."""

    def __init__(self, config: WorldConfig | None = None, **reader_kw: Any) -> None:
        self.reader = TextReader(config, **reader_kw)

    def __call__(
        self,
        images: np.ndarray,
        prompts: Sequence[str] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> np.ndarray:
        n = len(images)
        prompts = list(prompts) if prompts is not None else [""] * n
        metas = list(metadata) if metadata is not None else [None] * n
        if len(prompts) != n or len(metas) != n:
            raise ValueError("images, prompts and metadata differ in length")
        reads = self.reader.read(images)
        return np.array(
            [text_score(r, _target(p, m)) for r, p, m in zip(reads, prompts, metas, strict=True)],
            dtype=np.float32,
        )


@SCORERS.register("text")
def make_text(config: WorldConfig | None = None, **kw: Any) -> Callable[..., np.ndarray]:
    """OCR accuracy of the template-matching reader (reported metric and training reward)."""
    return TextScorer(config, **kw)


__all__ = ["TextReader", "TextScorer", "levenshtein", "make_text", "text_score"]
