"""Scenes of the mini world: the world's configuration, ground-truth scene records and layout.

A scene is a few coloured shapes, an optional line of text and a style that no prompt mentions.
Scenes are kept in struct-of-arrays form (:class:`SceneBatch`) so that layout and rendering are
vectorised; :meth:`SceneBatch.scene` gives a readable :class:`Scene` record of one item.

The pipeline is: a content request per item (:class:`SceneSpec`: which shapes in which colours,
an optional relation, an optional text), then :func:`layout_scenes`, which draws sizes, positions
and styles for a whole batch from one numpy generator. Everything is deterministic given the
generator's seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opd.worlds.mini.font import font_for_resolution, get_font

# The generator's version: a profile's world is this code plus its ``world.params`` (mini-19:
# config/profiles/mini.yaml; worlds are never changed in place, a new one gets a new name).
WORLD_VERSION = "mini-19"

BACKGROUNDS: tuple[str, ...] = ("flat", "gradient", "texture")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
# GenEval's margin: an offset shrinks by this fraction of the summed box sizes before the
# direction test (GenEval's evaluate_images.py, POSITION_THRESHOLD).
POSITION_THRESHOLD = 0.1


@dataclass(frozen=True)
class WorldConfig:
    """Every knob of the mini world; frozen (hashable) so that derived tables can be cached.

    Geometry is in pixels or fractions of the resolution. The palette's hues are 60 degrees apart
    and the backgrounds' chroma stays below ``bg_chroma_max``, so a pixel's hue and chroma name its
    colour on any background (what the rule-based detector relies on).
    """

    resolution: int = 24
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross")
    colors: tuple[tuple[str, tuple[int, int, int]], ...] = (
        ("red", (220, 40, 40)),
        ("yellow", (210, 210, 40)),
        ("green", (40, 190, 40)),
        ("cyan", (30, 195, 195)),
        ("blue", (45, 45, 220)),
        ("magenta", (200, 40, 200)),
    )
    alphabet: str = "AFJLMSTZ"
    # None: 3x5 below 20 px, 5x7 otherwise; "3x5x2": the 3x5 font scaled twice (6x10 glyphs)
    font: str | None = None
    max_count: int = 4
    counting_counts: tuple[int, ...] = (2, 3, 4)
    max_text_len: int = 3
    # "free": the text line anywhere; "left": at the left border, any height; "corner": at the
    # bottom-left corner (the line's pixels then always meet the model's patch grid the same way)
    text_align: str = "free"
    ink: tuple[int, int, int] = (20, 20, 20)
    # Style (never named by a prompt).
    background_probs: tuple[float, float, float] = (0.4, 0.3, 0.3)  # flat, gradient, texture
    bg_luminance: tuple[float, float] = (150.0, 235.0)
    bg_chroma_max: float = 16.0
    gradient_span: float = 45.0  # max luminance difference between a gradient's two ends
    texture_amplitude: tuple[float, float] = (6.0, 14.0)
    texture_cycles: tuple[float, float] = (2.0, 5.0)
    softness: tuple[float, float] = (0.6, 2.0)  # edge ramp width in px
    contrast: tuple[float, float] = (0.6, 1.0)  # object/ink colour = bg + c * (colour - bg)
    # Geometry: object half-extent r (px) lies in [max(min_radius_px, radius_lo * res),
    # radius_hi[n - 1] * res] for a scene of n items (objects + text line).
    min_radius_px: float = 3.0
    radius_lo: float = 0.12
    radius_hi: tuple[float, ...] = (0.25, 0.2, 0.16, 0.15, 0.14, 0.13)
    cross_arm: float = 0.32  # half-width of a cross's arm, as a fraction of r
    # Two-object relation scenes without text: "shrink" (the default, mini-2's) draws them like
    # any scene and shrinks them until they fit, which at 16 px leaves them 1.7-2.9 px, too
    # small for the detector to name both shapes of 16% of position scenes (0.98 overall);
    # "axis" (mini-19) lays the pair out along the relation's axis with half-extents in
    # [relation_min_radius_px, what fits] (detector 0.9975 at 16 px).
    relation_layout: str = "shrink"
    # "free": objects of scenes without text anywhere they fit (relation pairs as
    # relation_layout says); "grid": each in its own cell of a 2x2 grid, centred, as large as the
    # cell allows, a relation pair in two cells of one row or column (a tiny base draws shapes at
    # a few fixed places crisply, and at free places as blobs: benchmarks/results/teacher_curves);
    # "ordered": the grid's cells in reading order, the caption's first object in the top-left
    # cell, the next ones after it; a relation pair in the top row (left of / right of) or the
    # left column (above / below), so that where an object goes follows from the caption alone.
    object_layout: str = "free"
    relation_min_radius_px: float = 2.7
    gap_px: float = 2.0  # free space between item boxes
    border_px: float = 1.0
    # Prompt sets.
    templates: tuple[str, ...] = ("a photo of", "a picture of", "an image of", "a drawing of")
    test_per_tag: int = 64
    text_test_per_length: tuple[int, ...] = (8, 32, 64)
    aesthetics_test_size: int = 64
    # Validation split, taken from what would be train (test unchanged; prompts.py): contents
    # per tag, per text length (the last entry serves longer texts), in all. 0: no split.
    validation_per_tag: int = 0
    text_validation_per_length: tuple[int, ...] = (0,)
    aesthetics_validation_size: int = 0
    # Pretraining corpus.
    corpus_size: int = 50_000
    corpus_mix: tuple[tuple[str, float], ...] = (
        ("single", 0.2),
        ("two", 0.2),
        ("counting", 0.15),
        ("position", 0.15),
        ("text", 0.2),
        ("text_object", 0.1),
    )
    caption_drop_color: float = 0.3
    caption_drop_count: float = 0.3
    caption_drop_relation: float = 0.3
    caption_drop_text: float = 0.1
    caption_wrong: float = 0.05
    # Systematic alt-text confusions: the caption names the partner of the scene's letters
    # (alphabet[2i] <-> alphabet[2i+1]) or shapes (shapes[2i] <-> shapes[2i+1]) at these rates,
    # so that even with CFG the base draws the partner by chance, not by inability.
    caption_confuse_text: float = 0.0
    caption_confuse_shape: float = 0.0
    # per letter pair (one rate per pair, by the text's first letter) or per letter (one rate per
    # letter of the alphabet: a one-way confusion); empty: caption_confuse_text
    caption_confuse_text_pairs: tuple[float, ...] = ()
    caption_confuse_shape_pairs: tuple[float, ...] = ()  # the same per pair of shapes or shape
    caption_generic: float = 0.08
    caption_adjective: float = 0.1
    extra_object_rate: float = 0.1
    version: str = WORLD_VERSION

    def __post_init__(self) -> None:
        if self.resolution < 16:
            raise ValueError("resolution must be at least 16 px")
        if len(self.alphabet) != len(set(self.alphabet)):
            raise ValueError("alphabet has repeated letters")
        if self.text_align not in ("free", "left", "corner"):
            raise ValueError(
                f"text_align must be 'free', 'left' or 'corner', got {self.text_align!r}"
            )
        if max(self.counting_counts) > self.max_count:
            raise ValueError("counting_counts exceed max_count")
        sizes = (self.validation_per_tag, self.aesthetics_validation_size)
        if min(sizes + tuple(self.text_validation_per_length)) < 0 or not (
            self.text_validation_per_length
        ):
            raise ValueError("validation sizes must be >= 0 (text: one or more entries)")
        if self.font is not None:
            try:
                get_font(self.font)
            except KeyError as err:
                raise ValueError(str(err.args[0])) from None
        _check_confusion_rates(
            "caption_confuse_text_pairs", self.caption_confuse_text_pairs, self.alphabet
        )
        _check_confusion_rates(
            "caption_confuse_shape_pairs", self.caption_confuse_shape_pairs, self.shapes
        )
        if self.object_layout not in ("free", "grid", "ordered"):
            raise ValueError(
                f"object_layout must be 'free', 'grid' or 'ordered', got {self.object_layout!r}"
            )
        if self.relation_layout not in ("axis", "shrink"):
            raise ValueError(
                f"relation_layout must be 'axis' or 'shrink', got {self.relation_layout!r}"
            )

    # ---- derived -------------------------------------------------------------------------
    @property
    def color_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.colors)

    @property
    def palette(self) -> np.ndarray:
        """Palette as a float32 array (n_colors, 3)."""
        return np.array([c for _, c in self.colors], dtype=np.float32)

    @property
    def font_name(self) -> str:
        return self.font or font_for_resolution(self.resolution)

    def radius_range(self, n_items: int) -> tuple[float, float]:
        """Half-extent range (px) of the objects of a scene with ``n_items`` items."""
        lo = max(self.min_radius_px, self.radius_lo * self.resolution)
        hi_frac = self.radius_hi[min(max(n_items, 1), len(self.radius_hi)) - 1]
        return lo, max(lo, hi_frac * self.resolution)

    def replace(self, **changes: Any) -> WorldConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (tuples become lists)."""
        return json_friendly(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise, missing keys take defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown WorldConfig fields: {sorted(unknown)}")
        kw: dict[str, Any] = {}
        for k, v in data.items():
            if k == "colors":
                kw[k] = tuple((str(n), tuple(int(x) for x in c)) for n, c in v)
            elif k == "corpus_mix":
                kw[k] = tuple((str(n), float(p)) for n, p in v)
            elif isinstance(v, list):
                kw[k] = tuple(v)
            else:
                kw[k] = v
        return cls(**kw)


def _check_confusion_rates(field: str, rates: Sequence[float], names: Sequence[str]) -> None:
    """Confusion rates: one per pair of ``names`` or one per name, in [0, 1]; none at all means
    the field is off."""
    n_pairs = (len(names) + 1) // 2
    if rates and (len(rates) not in (n_pairs, len(names)) or not all(0 <= r <= 1 for r in rates)):
        raise ValueError(
            f"{field} needs {n_pairs} rates in [0, 1] (one per pair of {list(names)}) or "
            f"{len(names)} (one per name), got {list(rates)}"
        )


def json_friendly(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: json_friendly(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_friendly(v) for v in obj]
    return obj


DEFAULT_CONFIG = WorldConfig()


# ---- readable records ----------------------------------------------------------------------
@dataclass(frozen=True)
class SceneObject:
    """One shape: centre (x, y) and half-extent ``size`` in pixels; its box is centre +- size."""

    shape: str
    color: str
    x: float
    y: float
    size: float

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in pixels, GenEval's box order."""
        return (self.x - self.size, self.y - self.size, self.x + self.size, self.y + self.size)


@dataclass(frozen=True)
class TextLine:
    """A line of glyphs whose top-left pixel is (x, y)."""

    text: str
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Style:
    """Attributes no prompt mentions (the hidden utilities read them)."""

    background: str
    bg_color: tuple[float, float, float]
    bg_color2: tuple[float, float, float]
    gradient_angle: float
    texture_amplitude: float
    texture_cycles: tuple[float, float]
    texture_phase: tuple[float, float]
    softness: float
    contrast: float


@dataclass(frozen=True)
class Scene:
    """Full ground truth of one image."""

    objects: tuple[SceneObject, ...]
    text: TextLine | None
    style: Style
    resolution: int

    def to_dict(self) -> dict[str, Any]:
        return json_friendly(dataclasses.asdict(self))


@dataclass(frozen=True)
class SceneSpec:
    """What an item must contain: objects as (shape index, colour index), an optional relation
    (relation name, subject object index, target object index): "subject <rel> target", and an
    optional text string."""

    objects: tuple[tuple[int, int], ...] = ()
    relation: tuple[str, int, int] | None = None
    text: str | None = None


# ---- struct of arrays ----------------------------------------------------------------------
@dataclass
class SceneBatch:
    """A batch of scenes as arrays. Object slots with ``shape == -1`` are empty; text slots with
    ``text == -1`` are empty (codes index ``config.alphabet``)."""

    resolution: int
    shape: np.ndarray  # (N, K) int16
    color: np.ndarray  # (N, K) int16
    x: np.ndarray  # (N, K) float32, object centre
    y: np.ndarray  # (N, K) float32
    size: np.ndarray  # (N, K) float32, half-extent
    text: np.ndarray  # (N, L) int16
    text_x: np.ndarray  # (N,) int32, top-left of the line
    text_y: np.ndarray  # (N,) int32
    bg_kind: np.ndarray  # (N,) int8 into BACKGROUNDS
    bg_color: np.ndarray  # (N, 3) float32
    bg_color2: np.ndarray  # (N, 3) float32
    bg_angle: np.ndarray  # (N,) float32, radians
    tex_amp: np.ndarray  # (N,) float32 (0 unless texture)
    tex_freq: np.ndarray  # (N, 2) float32, cycles per image
    tex_phase: np.ndarray  # (N, 2) float32, in cycles
    softness: np.ndarray  # (N,) float32
    contrast: np.ndarray  # (N,) float32
    config: WorldConfig = field(default=DEFAULT_CONFIG, repr=False)

    def __len__(self) -> int:
        return int(self.shape.shape[0])

    @property
    def n_objects(self) -> np.ndarray:
        return (self.shape >= 0).sum(1)

    @property
    def text_len(self) -> np.ndarray:
        return (self.text >= 0).sum(1)

    def text_strings(self) -> list[str]:
        alpha = self.config.alphabet
        return ["".join(alpha[c] for c in row if c >= 0) for row in self.text]

    def subset(self, index: np.ndarray | Sequence[int] | slice) -> SceneBatch:
        """The items at ``index`` (any numpy index along the batch axis)."""
        kw = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v[index] if isinstance(v, np.ndarray) else v
        return SceneBatch(**kw)

    def scene(self, i: int) -> Scene:
        """Readable record of item ``i``."""
        cfg = self.config
        objs = tuple(
            SceneObject(
                shape=cfg.shapes[int(self.shape[i, k])],
                color=cfg.color_names[int(self.color[i, k])],
                x=float(self.x[i, k]),
                y=float(self.y[i, k]),
                size=float(self.size[i, k]),
            )
            for k in range(self.shape.shape[1])
            if self.shape[i, k] >= 0
        )
        codes = [int(c) for c in self.text[i] if c >= 0]
        text = None
        if codes:
            font = get_font(cfg.font_name)
            text = TextLine(
                text="".join(cfg.alphabet[c] for c in codes),
                x=int(self.text_x[i]),
                y=int(self.text_y[i]),
                width=font.text_width(len(codes)),
                height=font.height,
            )
        style = Style(
            background=BACKGROUNDS[int(self.bg_kind[i])],
            bg_color=tuple(float(v) for v in self.bg_color[i]),  # type: ignore[arg-type]
            bg_color2=tuple(float(v) for v in self.bg_color2[i]),  # type: ignore[arg-type]
            gradient_angle=float(self.bg_angle[i]),
            texture_amplitude=float(self.tex_amp[i]),
            texture_cycles=(float(self.tex_freq[i, 0]), float(self.tex_freq[i, 1])),
            texture_phase=(float(self.tex_phase[i, 0]), float(self.tex_phase[i, 1])),
            softness=float(self.softness[i]),
            contrast=float(self.contrast[i]),
        )
        return Scene(objects=objs, text=text, style=style, resolution=self.resolution)

    def scenes(self) -> list[Scene]:
        return [self.scene(i) for i in range(len(self))]

    @staticmethod
    def from_scenes(scenes: Sequence[Scene], config: WorldConfig = DEFAULT_CONFIG) -> SceneBatch:
        """Pack :class:`Scene` records (e.g. hand-built ones) into a batch."""
        n = len(scenes)
        k = max([len(s.objects) for s in scenes] + [1])
        ln = max([len(s.text.text) if s.text else 0 for s in scenes] + [1])
        shape = np.full((n, k), -1, np.int16)
        color = np.full((n, k), -1, np.int16)
        x = np.zeros((n, k), np.float32)
        y = np.zeros((n, k), np.float32)
        size = np.zeros((n, k), np.float32)
        text = np.full((n, ln), -1, np.int16)
        text_x = np.zeros(n, np.int32)
        text_y = np.zeros(n, np.int32)
        f32 = np.float32
        st = [s.style for s in scenes]
        for i, s in enumerate(scenes):
            if s.resolution != config.resolution:
                raise ValueError("scene resolution differs from the config's")
            for j, o in enumerate(s.objects):
                shape[i, j] = config.shapes.index(o.shape)
                color[i, j] = config.color_names.index(o.color)
                x[i, j], y[i, j], size[i, j] = o.x, o.y, o.size
            if s.text is not None:
                text[i, : len(s.text.text)] = [config.alphabet.index(c) for c in s.text.text]
                text_x[i], text_y[i] = s.text.x, s.text.y
        return SceneBatch(
            resolution=config.resolution,
            shape=shape,
            color=color,
            x=x,
            y=y,
            size=size,
            text=text,
            text_x=text_x,
            text_y=text_y,
            bg_kind=np.array([BACKGROUNDS.index(t.background) for t in st], np.int8),
            bg_color=np.array([t.bg_color for t in st], f32).reshape(n, 3),
            bg_color2=np.array([t.bg_color2 for t in st], f32).reshape(n, 3),
            bg_angle=np.array([t.gradient_angle for t in st], f32),
            tex_amp=np.array([t.texture_amplitude for t in st], f32),
            tex_freq=np.array([t.texture_cycles for t in st], f32).reshape(n, 2),
            tex_phase=np.array([t.texture_phase for t in st], f32).reshape(n, 2),
            softness=np.array([t.softness for t in st], f32),
            contrast=np.array([t.contrast for t in st], f32),
            config=config,
        )

    @staticmethod
    def concat(batches: Sequence[SceneBatch]) -> SceneBatch:
        """Concatenate batches of one resolution (object / text slots padded with -1)."""
        if not batches:
            raise ValueError("nothing to concatenate")
        k = max(b.shape.shape[1] for b in batches)
        ln = max(b.text.shape[1] for b in batches)
        kw: dict[str, Any] = {"resolution": batches[0].resolution, "config": batches[0].config}
        for f in dataclasses.fields(SceneBatch):
            if f.name in kw:
                continue
            parts = []
            for b in batches:
                v = getattr(b, f.name)
                width = {"shape": k, "color": k, "x": k, "y": k, "size": k, "text": ln}.get(f.name)
                if width is not None and v.shape[1] < width:
                    fill = -1 if f.name in ("shape", "color", "text") else 0
                    pad = np.full((v.shape[0], width - v.shape[1]), fill, dtype=v.dtype)
                    v = np.concatenate([v, pad], axis=1)
                parts.append(v)
            kw[f.name] = np.concatenate(parts, axis=0)
        return SceneBatch(**kw)


# ---- geometry helpers --------------------------------------------------------------------
def relations_between(
    box_a: np.ndarray, box_b: np.ndarray, threshold: float = POSITION_THRESHOLD
) -> np.ndarray:
    """GenEval's relative-position rule, vectorised: boxes (..., 4) as (x0, y0, x1, y1).

    The centre offset a - b shrinks towards 0 by ``threshold * (size_a + size_b)`` per axis; the
    relation holds when the shrunk offset's component, divided by the unshrunk offset's length,
    is beyond 0.5 ("left of": dx < -0.5, "right of": dx > 0.5, "above": dy < -0.5, "below":
    dy > 0.5; image y grows downwards). Returns bool (..., 4) in :data:`RELATIONS` order.
    """
    box_a = np.asarray(box_a, dtype=np.float64)
    box_b = np.asarray(box_b, dtype=np.float64)
    ca = (box_a[..., :2] + box_a[..., 2:]) / 2
    cb = (box_b[..., :2] + box_b[..., 2:]) / 2
    dim = np.abs(box_a[..., 2:] - box_a[..., :2]) + np.abs(box_b[..., 2:] - box_b[..., :2])
    off = ca - cb
    rev = np.maximum(np.abs(off) - threshold * dim, 0) * np.sign(off)
    norm = np.linalg.norm(off, axis=-1, keepdims=True)
    d = rev / np.maximum(norm, 1e-9)
    zero = np.all(np.abs(rev) < 1e-3, axis=-1)
    out = np.stack([d[..., 0] < -0.5, d[..., 0] > 0.5, d[..., 1] < -0.5, d[..., 1] > 0.5], -1)
    return out & ~zero[..., None]


def _relation_margin(
    xa: np.ndarray,
    ya: np.ndarray,
    ra: np.ndarray,
    xb: np.ndarray,
    yb: np.ndarray,
    rb: np.ndarray,
    rel: np.ndarray,
) -> np.ndarray:
    """Signed normalised component of the shrunk offset along each item's relation (bigger is
    safer); the boxes are inflated by 1 px per side, as a raster box may be."""
    off = np.stack([xa - xb, ya - yb], -1)
    dim = (2 * ra + 2 + 2 * rb + 2)[..., None]
    rev = np.maximum(np.abs(off) - POSITION_THRESHOLD * dim, 0) * np.sign(off)
    d = rev / np.maximum(np.linalg.norm(off, axis=-1, keepdims=True), 1e-9)
    sign = np.array([-1.0, 1.0, -1.0, 1.0])[rel]
    axis = np.array([0, 0, 1, 1])[rel]
    return sign * np.take_along_axis(d, axis[..., None], -1)[..., 0]


# ---- layout -------------------------------------------------------------------------------
def sample_styles(rng: np.random.Generator, n: int, config: WorldConfig) -> dict[str, np.ndarray]:
    """Draw the unprompted style of ``n`` scenes (arrays named as SceneBatch fields)."""
    cfg = config
    probs = np.asarray(cfg.background_probs, dtype=np.float64)
    kind = rng.choice(len(BACKGROUNDS), size=n, p=probs / probs.sum())
    lum = rng.uniform(*cfg.bg_luminance, size=n)
    # A low-chroma tint: a vector orthogonal to grey, of length <= bg_chroma_max.
    ang = rng.uniform(0, 2 * np.pi, size=n)
    mag = rng.uniform(0, cfg.bg_chroma_max, size=n)
    u = np.array([1.0, -0.5, -0.5]) / np.sqrt(1.5)
    v = np.array([0.0, 1.0, -1.0]) / np.sqrt(2.0)

    def tint_of(angle: np.ndarray) -> np.ndarray:
        """A tint whose chroma (max - min channel) is exactly ``mag``."""
        d = np.cos(angle)[:, None] * u + np.sin(angle)[:, None] * v
        return d / (d.max(1) - d.min(1))[:, None] * mag[:, None]

    tint = tint_of(ang)
    c1 = lum[:, None] + tint
    lum2 = np.clip(
        lum + rng.uniform(-cfg.gradient_span, cfg.gradient_span, size=n), *cfg.bg_luminance
    )
    ang2 = ang + rng.uniform(-1.0, 1.0, size=n)
    tint2 = tint_of(ang2)
    c2 = np.where((kind == 1)[:, None], lum2[:, None] + tint2, c1)
    bg_angle = rng.uniform(0, 2 * np.pi, size=n)
    tex_amp = np.where(kind == 2, rng.uniform(*cfg.texture_amplitude, size=n), 0.0)
    tex_freq = rng.uniform(*cfg.texture_cycles, size=(n, 2))
    tex_phase = rng.uniform(0, 1, size=(n, 2))
    softness = rng.uniform(*cfg.softness, size=n)
    contrast = rng.uniform(*cfg.contrast, size=n)
    f32 = np.float32
    return {
        "bg_kind": kind.astype(np.int8),
        "bg_color": np.clip(c1, 0, 255).astype(f32),
        "bg_color2": np.clip(c2, 0, 255).astype(f32),
        "bg_angle": bg_angle.astype(f32),
        "tex_amp": tex_amp.astype(f32),
        "tex_freq": tex_freq.astype(f32),
        "tex_phase": tex_phase.astype(f32),
        "softness": softness.astype(f32),
        "contrast": contrast.astype(f32),
    }


def _draw_position(
    rng: np.random.Generator, ex: np.ndarray, ey: np.ndarray, res: int, border: float, whole: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform centres keeping boxes (half-extents ex, ey) inside the image; NaN where a box
    cannot fit. ``whole``: the box's top-left corner sits on a whole pixel (text lines)."""
    span_x = res - 2 * (ex + border)
    span_y = res - 2 * (ey + border)
    ux = rng.uniform(0, 1, size=ex.shape)
    uy = rng.uniform(0, 1, size=ey.shape)
    if whole:
        px = np.floor(border + ux * (np.maximum(span_x, 0) + 1)) + ex
        py = np.floor(border + uy * (np.maximum(span_y, 0) + 1)) + ey
    else:
        px = border + ex + ux * np.maximum(span_x, 0)
        py = border + ey + uy * np.maximum(span_y, 0)
    return np.where(span_x >= 0, px, np.nan), np.where(span_y >= 0, py, np.nan)


# Direction (radians, image y downwards) from the target to a subject in each relation.
_REL_ANGLE = np.array([np.pi, 0.0, -np.pi / 2, np.pi / 2])


def _draw_related(
    rng: np.random.Generator,
    ox: np.ndarray,
    oy: np.ndarray,
    r_new: np.ndarray,
    r_other: np.ndarray,
    angle: np.ndarray,
    res: int,
    border: float,
    gap: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Centres at ``angle`` (+- 25 degrees) from (ox, oy), far enough for the boxes to clear;
    NaN where the box would leave the image."""
    theta = angle + rng.uniform(-0.45, 0.45, size=ox.shape)
    near = (r_new + r_other + gap) / np.maximum(np.abs(np.cos(theta)), np.abs(np.sin(theta)))
    dist = near + rng.uniform(0, 1, size=ox.shape) * np.maximum(res * 0.8 - near, 0)
    px = ox + dist * np.cos(theta)
    py = oy + dist * np.sin(theta)
    lo, hi = r_new + border, res - r_new - border
    inside = (px >= lo) & (px <= hi) & (py >= lo) & (py <= hi)
    return np.where(inside, px, np.nan), np.where(inside, py, np.nan)


def _axis_layout(
    rng: np.random.Generator,
    rel: np.ndarray,
    lo: float,
    hi: float,
    res: int,
    border: float,
    gap: float,
    jitter: float = 1.5,
) -> tuple[np.ndarray, ...]:
    """Two objects per scene along their relation's axis (``rel`` indexes :data:`RELATIONS`):
    half-extents uniform in [lo, hi], the axis's free space split at random before, between and
    after them, the second's cross-axis position within ``jitter`` px of the first's (zero where
    that would bring the relation's margin under 0.7). Returns the subject's and the target's
    centres and half-extents: sx, sy, sr, tx, ty, tr."""
    m = rel.size
    r = rng.uniform(lo, hi, size=(m, 2))  # the object at the low end of the axis, the other
    span = res - 2 * border
    slack = np.maximum(span - 2 * r.sum(1) - gap, 0)
    u = np.sort(rng.uniform(size=(m, 2)), axis=1)
    low = border + u[:, 0] * slack + r[:, 0]
    high = low + r[:, 0] + gap + (u[:, 1] - u[:, 0]) * slack + r[:, 1]
    cross_low = border + r[:, 0] + rng.uniform(size=m) * (span - 2 * r[:, 0])
    shift = rng.uniform(-jitter, jitter, size=m)
    cross_high = np.clip(cross_low + shift, border + r[:, 1], res - border - r[:, 1])
    along = np.stack([low, high], 1)
    subject_low = (rel == 0) | (rel == 2)  # left of / above: the subject has the smaller coordinate
    si = np.where(subject_low, 0, 1)
    ti = 1 - si
    rows = np.arange(m)
    horizontal = rel < 2
    for _ in range(2):
        cross = np.stack([cross_low, cross_high], 1)
        ax, ay = (
            np.where(horizontal[:, None], along, cross),
            np.where(horizontal[:, None], cross, along),
        )
        sx, sy, sr = ax[rows, si], ay[rows, si], r[rows, si]
        tx, ty, tr = ax[rows, ti], ay[rows, ti], r[rows, ti]
        ok = _relation_margin(sx, sy, sr, tx, ty, tr, rel) > 0.7
        if ok.all():
            return sx, sy, sr, tx, ty, tr
        cross_high = np.where(
            ok, cross_high, np.clip(cross_low, border + r[:, 1], res - border - r[:, 1])
        )
    raise RuntimeError(
        f"axis layout cannot keep the relation's margin for {int((~ok).sum())} scenes"
    )


def _grid_layout(
    rng: np.random.Generator,
    size: np.ndarray,
    valid: np.ndarray,
    res: int,
    border: float,
    gap: float,
    g: int | None = None,
    fill: bool = False,
    ordered: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Objects in distinct cells of a g x g grid (default g = ceil(sqrt(k))), jittered inside
    their cells, shrunk if a cell is too small: never overlapping. ``fill``: every object as
    large as its cell allows and centred in it; ``ordered``: object j in cell j (reading order)
    instead of a random cell. Returns x, y, size (n, k)."""
    n, k = size.shape
    g = g or int(np.ceil(np.sqrt(max(int(valid.sum(1).max()), 1))))
    cell = (res - 2 * border) / g
    size = np.full_like(size, (cell - gap) / 2) if fill else np.minimum(size, (cell - gap) / 2)
    if ordered:
        cells = np.broadcast_to(np.arange(k), (n, k))
    else:
        cells = np.argsort(rng.uniform(size=(n, g * g)), axis=1)[:, :k]
    free = np.maximum(cell - gap - 2 * size, 0)
    jx = (rng.uniform(size=(n, k)) - 0.5) * free
    jy = (rng.uniform(size=(n, k)) - 0.5) * free
    x = border + (cells % g + 0.5) * cell + jx
    y = border + (cells // g + 0.5) * cell + jy
    return np.where(valid, x, 0), np.where(valid, y, 0), np.where(valid, size, 0)


def layout_scenes(
    specs: Sequence[SceneSpec],
    rng: np.random.Generator,
    config: WorldConfig = DEFAULT_CONFIG,
    *,
    tries: int = 40,
    rounds: int = 12,
    grid_from: int = 2,
    shrink: float = 0.92,
) -> SceneBatch:
    """Draw sizes, non-overlapping positions (item boxes at least ``gap_px`` apart, relations
    satisfied with a safety margin over GenEval's rule) and styles for every spec.

    Vectorised sequential rejection sampling: the text line, then each object in turn, gets up to
    ``tries`` draws (uniform; the second object of a relation is drawn in the relation's
    direction from the first) until it clears the items already placed. A scene where some item
    found no place is laid out again in the next round; from round ``grid_from`` on, scenes with
    neither text nor relation fall back to a jittered grid, and the others' objects shrink by
    ``shrink`` per round.
    """
    cfg = config
    res = cfg.resolution
    n = len(specs)
    font = get_font(cfg.font_name)
    k = max([len(s.objects) for s in specs] + [1])
    ln = max([len(s.text or "") for s in specs] + [1])
    if ln > cfg.max_text_len and any(s.text for s in specs):
        raise ValueError(f"text longer than max_text_len={cfg.max_text_len}")
    shape = np.full((n, k), -1, np.int16)
    color = np.full((n, k), -1, np.int16)
    text = np.full((n, ln), -1, np.int16)
    rel = np.full(n, -1, np.int64)
    rel_s = np.zeros(n, np.int64)
    rel_t = np.zeros(n, np.int64)
    code = {c: i for i, c in enumerate(cfg.alphabet)}
    obj_rows: list[int] = []
    obj_cols: list[int] = []
    obj_vals: list[tuple[int, int]] = []
    for i, s in enumerate(specs):
        if s.objects:
            obj_rows.extend([i] * len(s.objects))
            obj_cols.extend(range(len(s.objects)))
            obj_vals.extend(s.objects)
        if s.text:
            text[i, : len(s.text)] = [code[c] for c in s.text]
        if s.relation is not None:
            rel[i] = RELATIONS.index(s.relation[0])
            rel_s[i], rel_t[i] = s.relation[1], s.relation[2]
    if obj_vals:
        vals = np.asarray(obj_vals, dtype=np.int16)
        shape[obj_rows, obj_cols] = vals[:, 0]
        color[obj_rows, obj_cols] = vals[:, 1]
    valid = shape >= 0
    has_text = (text >= 0).any(1)
    n_items = valid.sum(1) + has_text
    lo_hi = np.array([cfg.radius_range(int(m)) for m in range(0, k + 2)])
    lo, hi = lo_hi[n_items, 0], lo_hi[n_items, 1]
    size = lo[:, None] + rng.uniform(0, 1, size=(n, k)) * (hi - lo)[:, None]
    size = np.where(valid, size, 0.0)

    # Items: k objects + 1 text line (half-extents ex, ey).
    tw = np.array([font.text_width(int(m)) for m in (text >= 0).sum(1)], dtype=np.float64)
    th = np.where(has_text, font.height, 0).astype(np.float64)
    m_items = k + 1
    item_valid = np.concatenate([valid, has_text[:, None]], 1)
    x = np.zeros((n, m_items))
    y = np.zeros((n, m_items))
    todo = np.arange(n)
    if cfg.object_layout in ("grid", "ordered"):
        ordered = cfg.object_layout == "ordered"
        g = max(2, int(np.ceil(np.sqrt(k))))
        cell = (res - 2 * cfg.border_px) / g
        pair = np.nonzero((rel >= 0) & (valid.sum(1) == 2) & ~has_text)[0]
        if pair.size:
            # Subject and target in adjacent cells of one row (left of / right of) or column
            # (ordered: the first row or column).
            lane = np.zeros(pair.size, np.int64) if ordered else rng.integers(0, g, size=pair.size)
            start = (
                np.zeros(pair.size, np.int64) if ordered else rng.integers(0, g - 1, size=pair.size)
            )
            subject_low = (rel[pair] == 0) | (rel[pair] == 2)
            s_pos = np.where(subject_low, start, start + 1)
            t_pos = np.where(subject_low, start + 1, start)
            horizontal = rel[pair] < 2
            rows = np.arange(pair.size)
            for col, pos in ((rel_s[pair], s_pos), (rel_t[pair], t_pos)):
                cx_ = np.where(horizontal, pos, lane)
                cy_ = np.where(horizontal, lane, pos)
                x[pair[rows], col] = cfg.border_px + (cx_ + 0.5) * cell
                y[pair[rows], col] = cfg.border_px + (cy_ + 0.5) * cell
                size[pair[rows], col] = (cell - cfg.gap_px) / 2
            todo = np.setdiff1d(todo, pair)
        plain = todo[(rel[todo] < 0) & ~has_text[todo]]
        if plain.size:
            gx, gy, size[plain] = _grid_layout(
                rng,
                size[plain],
                valid[plain],
                res,
                cfg.border_px,
                cfg.gap_px,
                g=g,
                fill=True,
                ordered=ordered,
            )
            x[plain, :k], y[plain, :k] = gx, gy
            todo = np.setdiff1d(todo, plain)
    if cfg.relation_layout == "axis":
        pair = np.intersect1d(np.nonzero((rel >= 0) & (valid.sum(1) == 2) & ~has_text)[0], todo)
        if pair.size:
            hi_axis = min(cfg.radius_range(2)[1], (res - 2 * cfg.border_px - cfg.gap_px) / 4)
            lo_axis = min(cfg.relation_min_radius_px, hi_axis)
            sx, sy, sr, tx, ty, tr = _axis_layout(
                rng, rel[pair], lo_axis, hi_axis, res, cfg.border_px, cfg.gap_px
            )
            s_col, t_col = rel_s[pair], rel_t[pair]
            x[pair, s_col], y[pair, s_col], size[pair, s_col] = sx, sy, sr
            x[pair, t_col], y[pair, t_col], size[pair, t_col] = tx, ty, tr
            todo = np.setdiff1d(todo, pair)
    later = np.where(rel >= 0, np.maximum(rel_s, rel_t), -1)  # object placed second
    earlier = np.where(rel >= 0, np.minimum(rel_s, rel_t), -1)
    order = [k, *range(k)]  # the text line (widest item) first, then the objects
    gap, border = cfg.gap_px, cfg.border_px
    for round_ in range(rounds):
        if round_ >= grid_from and todo.size:
            plain = todo[(rel[todo] < 0) & ~has_text[todo]]
            if plain.size:
                gx, gy, size[plain] = _grid_layout(rng, size[plain], valid[plain], res, border, gap)
                x[plain, :k], y[plain, :k] = gx, gy
                todo = np.setdiff1d(todo, plain)
            size[todo] *= shrink
        if todo.size == 0:
            break
        t = todo
        ex = np.concatenate([size[t], tw[t, None] / 2], 1)
        ey = np.concatenate([size[t], th[t, None] / 2], 1)
        cx = np.zeros((t.size, m_items))
        cy = np.zeros((t.size, m_items))
        placed = np.zeros((t.size, m_items), bool)
        alive = np.ones(t.size, bool)
        for j in order:
            need = alive & item_valid[t, j]
            for _ in range(tries):
                w = np.nonzero(need)[0]
                if w.size == 0:
                    break
                px, py = _draw_position(rng, ex[w, j], ey[w, j], res, border, j == k)
                if j == k and cfg.text_align in ("left", "corner"):
                    px = np.ceil(border) + ex[w, j]
                if j == k and cfg.text_align == "corner":
                    py = res - np.ceil(border) - ey[w, j]
                first = earlier[t[w]] == j
                if first.any():
                    # The first object of a relation goes to the half that leaves room for the
                    # second: mirror draws on the wrong side of the centre.
                    ws = t[w]
                    sign = np.where(rel_s[ws] == j, 1.0, -1.0)
                    a = _REL_ANGLE[np.maximum(rel[ws], 0)]
                    cos, sin = np.round(np.cos(a)), np.round(np.sin(a))
                    wrong = first & (((px - res / 2) * cos + (py - res / 2) * sin) * sign < 0)
                    px = np.where(wrong & (cos != 0), res - px, px)
                    py = np.where(wrong & (sin != 0), res - py, py)
                check = later[t[w]] == j
                if check.any():
                    ws = t[w]
                    s_i, t_i = rel_s[ws], rel_t[ws]
                    other = np.where(s_i == j, t_i, s_i)
                    ox, oy = cx[w, other], cy[w, other]
                    angle = _REL_ANGLE[np.maximum(rel[ws], 0)] + np.where(s_i == j, 0, np.pi)
                    dx, dy = _draw_related(
                        rng, ox, oy, size[ws, j], size[ws, other], angle, res, border, gap
                    )
                    px, py = np.where(check, dx, px), np.where(check, dy, py)
                    sx, sy = np.where(s_i == j, px, ox), np.where(s_i == j, py, oy)
                    tx, ty = np.where(s_i == j, ox, px), np.where(s_i == j, oy, py)
                    margin = _relation_margin(
                        sx, sy, size[ws, s_i], tx, ty, size[ws, t_i], np.maximum(rel[ws], 0)
                    )
                    rel_ok = ~check | (margin > 0.7)
                else:
                    rel_ok = np.ones(w.size, bool)
                sep = (np.abs(px[:, None] - cx[w]) >= ex[w, j, None] + ex[w] + gap) | (
                    np.abs(py[:, None] - cy[w]) >= ey[w, j, None] + ey[w] + gap
                )
                good = (sep | ~placed[w]).all(1) & np.isfinite(px) & np.isfinite(py) & rel_ok
                g = w[good]
                cx[g, j], cy[g, j] = px[good], py[good]
                placed[g, j] = True
                need[g] = False
            alive &= ~need
        x[t[alive]] = cx[alive]
        y[t[alive]] = cy[alive]
        todo = t[~alive]
    if todo.size:
        raise RuntimeError(f"could not lay out {todo.size} scenes (e.g. {specs[int(todo[0])]})")

    styles = sample_styles(rng, n, cfg)
    text_x = np.where(has_text, np.round(x[:, -1] - tw / 2), 0).astype(np.int32)
    text_y = np.where(has_text, np.round(y[:, -1] - th / 2), 0).astype(np.int32)
    return SceneBatch(
        resolution=res,
        shape=shape,
        color=color,
        x=np.where(valid, x[:, :k], 0).astype(np.float32),
        y=np.where(valid, y[:, :k], 0).astype(np.float32),
        size=size.astype(np.float32),
        text=text,
        text_x=text_x,
        text_y=text_y,
        config=cfg,
        **styles,
    )
