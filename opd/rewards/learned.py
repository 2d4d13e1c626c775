"""Learned scorers of the mini world: small torch models that play PickScore, HPSv2.1 and CLIP.

Three scorers are trained inside the workflow (see :mod:`opd.rewards.train_scorers`) and
registered here:

``clip`` (analog of CLIPScore)
    A contrastive image-text model (CNN image tower, bag-of-words text tower) trained with the
    symmetric InfoNCE loss on (caption, image) pairs: corpus scenes captioned truthfully in the
    corpus's alt-text phrasing, plus clean renders of the training prompts. The score is the
    cosine similarity of the two normalised embeddings, in [-1, 1] (CLIPScore's
    ``w * max(cos, 0)`` without the clipping and rescaling).
``pick``, ``hps`` (analogs of PickScore and HPSv2.1)
    Preference models ``s(image, prompt)`` built on the trained CLIP, as PickScore and HPS are:
    ``s = MLP([taste(image), n(f_img) * n(f_txt)]) + alpha * cos(f_img, f_txt)``, where
    ``f_img``, ``f_txt`` come from CLIP's towers (copied from the trained ``clip``; the image
    tower stays frozen, the text tower is fine-tuned) and ``taste`` is the
    model's own small image tower (conv + GroupNorm, a thumbnail MLP, a local-contrast input
    channel) for what raters like beyond content. Fit with the Bradley-Terry (pairwise
    logistic) loss ``-log sigmoid(s(winner) - s(loser))`` on image pairs rendered for one
    prompt and labelled by one of the world's hidden utilities (the way PickScore and HPS were
    fit to human choices). The score is the raw logit (unbounded, like PickScore's); only
    differences between images of one prompt are meaningful.

A fourth model of the same family, ``pref2`` (the ImageReward analog, a held-out metric), is
registered in :mod:`opd.rewards.heldout` and built from the classes here.

Text is tokenised (:func:`tokenize`) as lowercase words plus adjacent-word bigrams, so that the
bag of words still sees bindings such as "red circle"; the quoted target of a text prompt is
spelled out as positional letter tokens, so unseen strings are still understood. The
vocabulary is built from the training texts and stored with the weights; tokens never seen in
training map to ``<unk>``.

Images are uint8 ``(N, H, W, 3)``; a scorer resizes them (bilinear, antialiased) to the
resolution it was trained at. Weights are stored per scorer in a folder holding
``model.safetensors`` and ``config.json`` (vocabulary, architecture hyper-parameters, held-out
metrics, world version). Scorer factories take ``weights`` (that folder, or a folder holding
``<name>/``); without it they read ``$OPD_SCORER_DIR/<name>``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from opd.registry import SCORERS

SCORER_DIR_ENV = "OPD_SCORER_DIR"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+")


# --------------------------------------------------------------------------------------------
# Text: tokeniser and vocabulary
# --------------------------------------------------------------------------------------------
_QUOTED = re.compile(r'"([^"]*)"')


def tokenize(text: str, bigrams: bool = True) -> list[str]:
    """Tokens of ``text``: lowercase words (``[a-z0-9]+``) outside double quotes, each quoted
    string replaced by the word ``quoted`` and spelled out as positional letter tokens
    (``<0:m>``, ``<1:a>``, ...) plus a length token (``<len:3>``), so that strings never seen in
    training still get an embedding; then bigrams of adjacent words (``red_circle``)."""
    lowered = text.lower()
    spelled: list[str] = []
    for q in _QUOTED.findall(lowered):
        spelled += [f"<{i}:{c}>" for i, c in enumerate(q)] + [f"<len:{len(q)}>"]
    words = _WORD.findall(_QUOTED.sub(" quoted ", lowered))
    if bigrams:
        words += [f"{a}_{b}" for a, b in itertools.pairwise(words)]
    return words + spelled


@dataclass
class Vocab:
    """A word (and bigram) vocabulary; index 0 is padding, index 1 the unknown token."""

    tokens: list[str]
    bigrams: bool = True
    max_len: int = 48

    def __post_init__(self) -> None:
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        min_count: int = 2,
        bigrams: bool = True,
        max_size: int = 4096,
        max_len: int = 48,
    ) -> Vocab:
        """Vocabulary of the tokens seen at least ``min_count`` times (most frequent first;
        ties broken alphabetically, so the result does not depend on the order of ``texts``)."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tokenize(text, bigrams))
        kept = sorted(
            (t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t)
        )
        return cls([PAD, UNK, *kept[: max_size - 2]], bigrams=bigrams, max_len=max_len)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Padded (N, L) int64 token ids (0 = padding); an empty text gives an all-pad row."""
        rows = [
            [self.index.get(t, 1) for t in tokenize(s, self.bigrams)][: self.max_len] for s in texts
        ]
        width = max([1, *(len(r) for r in rows)])
        out = torch.zeros(len(rows), width, dtype=torch.int64)
        for i, r in enumerate(rows):
            if r:
                out[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "bigrams": self.bigrams, "max_len": self.max_len}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocab:
        return cls(list(data["tokens"]), bool(data["bigrams"]), int(data["max_len"]))


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
@dataclass
class ArchConfig:
    """Architecture hyper-parameters of a learned scorer (stored in its ``config.json``).

    For a preference model these describe its taste tower; ``content`` holds the architecture
    of its content (CLIP) towers as a JSON dict (None: towers like the taste tower's, without
    the thumbnail and LCN inputs).
    """

    kind: str = "preference"  # "preference" or "contrastive"
    resolution: int = 24
    channels: tuple[int, ...] = (16, 32, 32)
    strides: tuple[int, ...] = (2, 1, 2)
    embed_dim: int = 64
    text_dim: int = 64
    head_hidden: int = 64
    activation: str = "relu"
    norm: str = "group"  # "group" (GroupNorm, 4 groups) after every conv, or "none"
    lcn: bool = False  # add a local-contrast-normalised luminance input channel
    thumb: int = 0  # > 0: add a thumbnail path (average-pooled by this factor) -> MLP
    vocab_size: int = 2
    content: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["channels"] = list(self.channels)
        data["strides"] = list(self.strides)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ArchConfig:
        data = dict(data)
        data["channels"] = tuple(data["channels"])
        data["strides"] = tuple(data["strides"])
        return cls(**data)

    def content_arch(self) -> ArchConfig:
        """Architecture of a preference model's content towers."""
        if self.content is not None:
            return ArchConfig.from_json(self.content)
        return replace(self, kind="contrastive", lcn=False, thumb=0, content=None)


def _act(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[name]()


def images_to_tensor(images: np.ndarray | torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, R, R) in [-1, 1], resized to ``resolution``."""
    x = torch.as_tensor(np.asarray(images))
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected images of shape (N, H, W, 3), got {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(
            x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
        )
    return x.contiguous()


def local_contrast(x: torch.Tensor, k: int = 5, c: float = 0.05) -> torch.Tensor:
    """Local contrast normalisation of the luminance: ``(l - mean_k) / (std_k + c)`` over
    ``k x k`` windows; (N, 1, H, W). Makes edge profiles independent of their amplitude, so
    that edge softness is visible whatever the contrast."""
    lum = x.mean(1, keepdim=True)
    pad = (k // 2,) * 4
    mu = F.avg_pool2d(F.pad(lum, pad, mode="replicate"), k, 1)
    var = F.avg_pool2d(F.pad(lum * lum, pad, mode="replicate"), k, 1) - mu * mu
    return (lum - mu) / (var.clamp_min(0.0).sqrt() + c)


class ImageTower(nn.Module):
    """Conv stack (3x3, ``strides``, GroupNorm) -> [flatten, global mean, global max] -> linear,
    plus optionally a thumbnail MLP (global layout, brightness, background ramps).

    The flattened map keeps where things are (position and counting prompts); the pooled
    features are translation invariant (what is in the image, whatever its place).
    """

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.lcn = cfg.lcn
        self.thumb_factor = cfg.thumb
        layers: list[nn.Module] = []
        c_in, size = 3 + int(cfg.lcn), cfg.resolution
        if len(cfg.strides) != len(cfg.channels):
            raise ValueError("ArchConfig.strides and .channels differ in length")
        for c_out, stride in zip(cfg.channels, cfg.strides, strict=True):
            layers.append(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1))
            if cfg.norm == "group":
                layers.append(nn.GroupNorm(4, c_out))
            elif cfg.norm != "none":
                raise ValueError(f"unknown norm {cfg.norm!r} (expected 'group' or 'none')")
            layers.append(_act(cfg.activation))
            c_in, size = c_out, (size + 2 - 3) // stride + 1
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in * size * size + 2 * c_in, cfg.embed_dim)
        self.thumb: nn.Module | None = None
        if cfg.thumb:
            n_in = 3 * (cfg.resolution // cfg.thumb) ** 2
            self.thumb = nn.Sequential(
                nn.Linear(n_in, 2 * cfg.embed_dim),
                _act(cfg.activation),
                nn.Linear(2 * cfg.embed_dim, cfg.embed_dim),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([x, local_contrast(x)], dim=1) if self.lcn else x
        h = self.convs(inp)
        out = self.proj(torch.cat([h.flatten(1), h.mean((2, 3)), h.amax((2, 3))], dim=1))
        if self.thumb is not None:
            out = out + self.thumb(F.avg_pool2d(x, self.thumb_factor).flatten(1))
        return out


class TextTower(nn.Module):
    """Mean of the known tokens' embeddings (padding and ``<unk>`` are left out) -> MLP."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.text_dim, padding_idx=0)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.text_dim),
            _act(cfg.activation),
            nn.Linear(cfg.text_dim, cfg.embed_dim),
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids > 1).unsqueeze(-1).float()
        bag = (self.embed(ids) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.mlp(bag)


class PreferenceModel(nn.Module):
    """A preference logit ``s(image, text)`` built like PickScore / HPS on top of CLIP::

        s = MLP([taste(x), 8 * n(f_img) * n(f_txt)]) + alpha * cos(f_img, f_txt)

    ``f_img``, ``f_txt`` come from the content towers (a CLIP image and text tower, copied from
    the trained ``clip`` scorer; while the preference is fit the image tower stays frozen and
    the text tower is optionally fine-tuned; ``n`` normalises);
    ``taste`` is the model's own image tower (conv + thumbnail + local-contrast input), which
    learns what the raters like about an image beyond its content.
    """

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        content = cfg.content_arch()
        if content.resolution != cfg.resolution:
            raise ValueError("a preference model's content and taste towers need one resolution")
        self.content_image = ImageTower(content)
        self.content_text = TextTower(content)
        self.taste = ImageTower(cfg)
        self.head = nn.Sequential(
            nn.Linear(cfg.embed_dim + content.embed_dim, cfg.head_hidden),
            _act(cfg.activation),
            nn.Linear(cfg.head_hidden, 1),
        )
        self.alpha = nn.Parameter(torch.tensor(5.0))

    def content_features(
        self, x: torch.Tensor, ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.content_image(x), self.content_text(ids)

    def score_features(
        self, f_taste: torch.Tensor, f_img: torch.Tensor, f_txt: torch.Tensor
    ) -> torch.Tensor:
        prod = F.normalize(f_img, dim=-1) * F.normalize(f_txt, dim=-1)
        head = self.head(torch.cat([f_taste, 8.0 * prod], dim=-1)).squeeze(-1)
        return head + self.alpha * prod.sum(-1)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.score_features(self.taste(x), *self.content_features(x, ids))


class ContrastiveModel(nn.Module):
    """CLIP-style two-tower model with a learnable temperature (``logit_scale``, log space)."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image = ImageTower(cfg)
        self.text = TextTower(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07)), dtype=torch.float32))

    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(x), dim=-1)

    def embed_texts(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(ids), dim=-1)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of matched (image, text) rows, shape (N,)."""
        return (self.embed_images(x) * self.embed_texts(ids)).sum(-1)


def build_model(cfg: ArchConfig) -> PreferenceModel | ContrastiveModel:
    if cfg.kind == "preference":
        return PreferenceModel(cfg)
    if cfg.kind == "contrastive":
        return ContrastiveModel(cfg)
    raise ValueError(f"unknown scorer kind {cfg.kind!r} (expected 'preference' or 'contrastive')")


# --------------------------------------------------------------------------------------------
# Losses and metrics
# --------------------------------------------------------------------------------------------
def bradley_terry_loss(
    score_a: torch.Tensor, score_b: torch.Tensor, a_wins: torch.Tensor
) -> torch.Tensor:
    """Mean of ``-log sigmoid(s_winner - s_loser)``; ``a_wins`` is 1 where image a is preferred."""
    return F.binary_cross_entropy_with_logits(score_a - score_b, a_wins.float())


def info_nce_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP: row i of ``img`` matches row i of ``txt`` (both normalised)."""
    logits = logit_scale.exp() * img @ txt.T
    target = torch.arange(len(img))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def pairwise_accuracy(score_a: np.ndarray, score_b: np.ndarray, a_wins: np.ndarray) -> float:
    """Fraction of pairs ordered like the label (a tie counts as half right)."""
    diff = np.asarray(score_a, np.float64) - np.asarray(score_b, np.float64)
    lab = np.asarray(a_wins).astype(bool)
    right = np.where(diff == 0, 0.5, ((diff > 0) == lab).astype(np.float64))
    return float(right.mean())


def retrieval_top1(similarity: np.ndarray) -> float:
    """Top-1 accuracy of a square similarity matrix whose matches lie on the diagonal.

    Row i holds the similarity of query i to every candidate; a row counts as right only if its
    diagonal entry is strictly larger than every other entry (ties count as wrong).
    """
    sim = np.asarray(similarity, np.float64)
    diag = np.diag(sim)
    off = sim + np.diag(np.full(len(sim), -np.inf))
    return float((diag > off.max(axis=1)).mean())


# --------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------
def save_scorer(
    model: PreferenceModel | ContrastiveModel,
    vocab: Vocab,
    out_dir: str | Path,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (architecture, vocabulary, ``info``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    meta = {"arch": model.cfg.to_json(), "vocab": vocab.to_json(), **(info or {})}
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
    return out


def resolve_weights(name: str, weights: str | Path | None) -> Path:
    """The folder holding ``name``'s weights: ``weights`` itself, ``weights/<name>``, or
    ``$OPD_SCORER_DIR/<name>``; a clear error names what is missing."""
    if weights is None:
        root = os.environ.get(SCORER_DIR_ENV)
        if not root:
            raise FileNotFoundError(
                f"learned scorer {name!r} needs its weights: pass weights=<folder> or set "
                f"${SCORER_DIR_ENV} to the folder that holds {name}/ (written by "
                "`python -m opd.rewards.train_scorers`)"
            )
        weights = Path(root)
    base = Path(weights)
    for cand in (base, base / name):
        if (cand / CONFIG_FILE).is_file() and (cand / WEIGHTS_FILE).is_file():
            return cand
    raise FileNotFoundError(
        f"learned scorer {name!r}: no {CONFIG_FILE} + {WEIGHTS_FILE} in {base} or {base / name}"
    )


class LearnedScorer:
    """Callable ``(images uint8 (N,H,W,3), prompts, metadata) -> np.ndarray (N,)`` (float64).

    Loads its weights lazily on the first call (once), scores in batches without gradients.
    """

    def __init__(self, name: str, weights: str | Path | None = None, batch_size: int = 512) -> None:
        self.name = name
        self.path = resolve_weights(name, weights)
        self.batch_size = batch_size
        self._model: PreferenceModel | ContrastiveModel | None = None
        self._vocab: Vocab | None = None
        self.info: dict[str, Any] = {}

    def load(self) -> tuple[PreferenceModel | ContrastiveModel, Vocab]:
        if self._model is None or self._vocab is None:
            meta = json.loads((self.path / CONFIG_FILE).read_text(encoding="utf-8"))
            model = build_model(ArchConfig.from_json(meta["arch"]))
            model.load_state_dict(load_file(str(self.path / WEIGHTS_FILE)))
            model.eval()
            self._model, self._vocab = model, Vocab.from_json(meta["vocab"])
            self.info = {k: v for k, v in meta.items() if k not in ("arch", "vocab")}
        return self._model, self._vocab

    @property
    def model(self) -> PreferenceModel | ContrastiveModel:
        return self.load()[0]

    def __call__(
        self,
        images: np.ndarray,
        prompts: Sequence[str],
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> np.ndarray:
        model, vocab = self.load()
        images = np.asarray(images)
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        out = np.empty(len(images), np.float64)
        with torch.inference_mode():
            for s in range(0, len(images), self.batch_size):
                x = images_to_tensor(images[s : s + self.batch_size], model.cfg.resolution)
                ids = vocab.encode(list(prompts[s : s + self.batch_size]))
                out[s : s + len(x)] = model(x, ids).double().numpy()
        return out


def load_learned_scorer(name: str, weights_dir: str | Path | None = None) -> LearnedScorer:
    """The learned scorer ``name`` (``pick``, ``hps``, ``clip``, ``pref2``) from ``weights_dir``
    (its own folder or the folder holding ``<name>/``; default ``$OPD_SCORER_DIR``)."""
    return LearnedScorer(name, weights_dir)


@SCORERS.register("pick")
def pick_scorer(weights: str | Path | None = None) -> LearnedScorer:
    """PickScore analog: preference model trained on the hidden ``pick`` utility."""
    return LearnedScorer("pick", weights)


@SCORERS.register("hps")
def hps_scorer(weights: str | Path | None = None) -> LearnedScorer:
    """HPSv2.1 analog: preference model trained on the hidden ``hps`` utility."""
    return LearnedScorer("hps", weights)


@SCORERS.register("clip")
def clip_scorer(weights: str | Path | None = None) -> LearnedScorer:
    """CLIPScore analog: cosine similarity of a contrastive image-text model, in [-1, 1]."""
    return LearnedScorer("clip", weights)


__all__ = [
    "ArchConfig",
    "ContrastiveModel",
    "LearnedScorer",
    "PreferenceModel",
    "Vocab",
    "bradley_terry_loss",
    "build_model",
    "images_to_tensor",
    "info_nce_loss",
    "load_learned_scorer",
    "pairwise_accuracy",
    "retrieval_top1",
    "save_scorer",
    "tokenize",
]
