"""Vectorised numpy renderer of mini-world scenes to RGB uint8 images (N, H, W, 3).

Background (flat, two-tone gradient, or a low-amplitude luminance texture), then the objects in
slot order, each blended with a coverage ``alpha = clip(0.5 - d / softness, 0, 1)`` from a signed
distance ``d`` (px) to the shape's outline, then the text line's glyph pixels. Object and ink
colours are pulled towards the mean background colour by the scene's contrast:
``colour = bg + contrast * (palette - bg)``. Every shape fits the box centre +- size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from opd.worlds.mini.font import get_font
from opd.worlds.mini.scenes import DEFAULT_CONFIG, Scene, SceneBatch, WorldConfig

_SQRT5 = np.float32(np.sqrt(5.0))


def shape_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray, arm: float = 0.38):
    """Signed distance-like field (px, < 0 inside) of ``shape`` with half-extent ``r``.

    ``dx``, ``dy``: offsets of pixel centres from the shape's centre, broadcastable with ``r``.
    Triangles point up (apex at top, base at bottom); crosses are "+" with arms ``arm * r`` wide
    (half-width).
    """
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - r
    if shape == "triangle":
        # Apex (0, -r), base corners (+-r, r); outward normals (+-2, -1)/sqrt5 and (0, 1).
        side = (2 * np.abs(dx) - (dy + r)) / _SQRT5
        return np.maximum(side, dy - r)
    if shape == "cross":
        ax, ay = np.abs(dx), np.abs(dy)
        w = arm * r
        return np.minimum(np.maximum(ax - r, ay - w), np.maximum(ax - w, ay - r))
    raise KeyError(f"unknown shape {shape!r}")


def render(
    scenes: SceneBatch | Sequence[Scene], config: WorldConfig | None = None, chunk: int = 2048
) -> np.ndarray:
    """Render scenes (a :class:`SceneBatch` or a list of :class:`Scene`) to uint8 (N, H, W, 3)."""
    if not isinstance(scenes, SceneBatch):
        scenes = SceneBatch.from_scenes(list(scenes), config or DEFAULT_CONFIG)
    cfg = config or scenes.config
    n, res = len(scenes), scenes.resolution
    out = np.empty((n, res, res, 3), np.uint8)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        out[sl] = _render_chunk(scenes.subset(sl), cfg)
    return out


def _render_chunk(b: SceneBatch, cfg: WorldConfig) -> np.ndarray:
    n, res = len(b), b.resolution
    f32 = np.float32
    coord = (np.arange(res, dtype=f32) + f32(0.5))[None]
    gx = np.broadcast_to(coord[:, None, :], (1, res, res))  # x = column
    gy = np.broadcast_to(coord[:, :, None], (1, res, res))  # y = row
    u = gx / f32(res) - f32(0.5)
    v = gy / f32(res) - f32(0.5)
    ca = np.cos(b.bg_angle)[:, None, None]
    sa = np.sin(b.bg_angle)[:, None, None]
    # Gradient position along the angle (c2 == c1 except for gradients).
    t = np.clip(f32(0.5) + u * ca + v * sa, 0, 1)
    c1 = b.bg_color[:, None, None, :]
    c2 = b.bg_color2[:, None, None, :]
    img = c1 + t[..., None] * (c2 - c1)
    textured = np.nonzero(b.tex_amp > 0)[0]
    if textured.size:
        ur = u * ca[textured] + v * sa[textured]
        vr = v * ca[textured] - u * sa[textured]
        fq, ph = b.tex_freq[textured], b.tex_phase[textured]
        two_pi = f32(2 * np.pi)
        tex = np.sin(two_pi * (ur * fq[:, 0, None, None] + ph[:, 0, None, None])) * np.sin(
            two_pi * (vr * fq[:, 1, None, None] + ph[:, 1, None, None])
        )
        img[textured] += (tex * b.tex_amp[textured, None, None])[..., None]

    bg_mean = (b.bg_color + b.bg_color2) / 2  # (n, 3)
    contrast = b.contrast[:, None]
    palette = cfg.palette
    for k in range(b.shape.shape[1]):
        for s, name in enumerate(cfg.shapes):
            idx = np.nonzero(b.shape[:, k] == s)[0]
            if idx.size == 0:
                continue
            dx = gx - b.x[idx, k, None, None]
            dy = gy - b.y[idx, k, None, None]
            d = shape_distance(name, dx, dy, b.size[idx, k, None, None], cfg.cross_arm)
            a = np.clip(f32(0.5) - d / b.softness[idx, None, None], 0, 1)[..., None]
            col = bg_mean[idx] + contrast[idx] * (palette[b.color[idx, k]] - bg_mean[idx])
            img[idx] = img[idx] * (1 - a) + a * col[:, None, None, :]

    if (b.text >= 0).any():
        font = get_font(cfg.font_name)
        glyphs = font.stack(cfg.alphabet)
        mask = np.zeros((n, res, res), dtype=bool)
        gh, gw = font.height, font.width
        ry = np.arange(gh)[None, :, None]
        rx = np.arange(gw)[None, None, :]
        for slot in range(b.text.shape[1]):
            idx = np.nonzero(b.text[:, slot] >= 0)[0]
            if idx.size == 0:
                continue
            rows = np.clip(b.text_y[idx, None, None] + ry, 0, res - 1)
            cols = np.clip(b.text_x[idx, None, None] + slot * font.pitch + rx, 0, res - 1)
            g = glyphs[b.text[idx, slot]]
            rows, cols = np.broadcast_arrays(rows, cols)
            sel = np.broadcast_to(idx[:, None, None], rows.shape)
            mask[sel[g], rows[g], cols[g]] = True
        ink = bg_mean + contrast * (np.asarray(cfg.ink, f32) - bg_mean)
        m = mask[..., None]
        img = np.where(m, ink[:, None, None, :], img)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
