"""Tiny models built locally from configs: the mini world's model and a tiny random SD3 pipeline.

Nothing here downloads anything. `build_tokenizer` makes a word-level fast tokenizer with the
`tokenizers` library (whole words from a given vocabulary, unknown words spelled out letter by
letter, so quoted text such as ``"ab"`` stays readable to the model). `build_tiny_flow_model`
builds the mini world's pixel-space `FlowModel`: a diffusers `SD3Transformer2DModel` at tiny size
plus a one-layer `CLIPTextModelWithProjection`, random weights from a seed (a prototype
measured this shape, 3 layers x 2 heads x 32, patch 2, ~0.47M parameters, at ~1,190 img/s
training at 16x16).
`build_tiny_sd3_pipeline_dir` writes a complete random SD3(.5)-shaped diffusers pipeline folder
(transformer with a dual-attention layer and RMS qk-norm, AutoencoderKL, two CLIP towers with a
hand-written byte-level BPE vocab.json / merges.txt, a Unigram T5 tokenizer and T5 encoder) so
the paper profile's loading code runs in tests.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from opd.models.base import FF_GELU, FlowModel, set_ff_gelu
from opd.models.prompts import ClipPromptEncoder
from opd.models.sd3 import SD3_CONFIG_NAME

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
#: Punctuation kept as tokens of their own (quotes mark the text task's target).
PUNCTUATION = tuple("\"',.:;!?-()")
_PIECES = re.compile(r"\w+|[^\w\s]", re.UNICODE)

#: Words of the tiny SD3 pipeline's default vocabulary (only its BPE merges use them).
DEFAULT_SD3_WORDS: tuple[str, ...] = (
    *("a", "photo", "of", "red", "green", "blue", "circle", "square", "triangle", "cross"),
    *("left", "right", "above", "below", "the", "and", "with", "text", "sign"),
)


def build_tokenizer(
    vocab_words: Sequence[str],
    max_length: int,
    *,
    lowercase: bool = True,
    char_fallback: bool = True,
) -> Any:
    """A word-level `PreTrainedTokenizerFast`: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3.

    Every sequence is ``<bos> words <eos>``; the pad token is ``<pad>``. Words of
    ``vocab_words`` (split on spaces and punctuation) are single tokens; with ``char_fallback``
    any other word of letters/digits is spelled as ``x ##y ##z`` (a WordPiece model whose vocab
    holds whole words plus single characters), otherwise it maps to ``<unk>``.
    ``model_max_length`` is ``max_length`` (special tokens included).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {PAD: 0, UNK: 1, BOS: 2, EOS: 3}

    def add(tok: str) -> None:
        if tok and tok not in vocab:
            vocab[tok] = len(vocab)

    for p in PUNCTUATION:
        add(p)
    for word in vocab_words:
        for piece in _PIECES.findall(word.lower() if lowercase else word):
            add(piece)
    if char_fallback:
        chars = set("abcdefghijklmnopqrstuvwxyz0123456789")
        if not lowercase:
            chars |= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        for word in vocab_words:
            chars |= {c for c in (word.lower() if lowercase else word) if c.isalnum()}
        for c in sorted(chars):
            add(c)
        for c in sorted(chars):
            add("##" + c)
        model = models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=64)
    else:
        model = models.WordLevel(vocab=vocab, unk_token=UNK)
    tok = Tokenizer(model)
    norms = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    tok.decoder = decoders.WordPiece(prefix="##") if char_fallback else decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=int(max_length),
        padding_side="right",
    )


@dataclass
class TinyModelConfig:
    """Shape of the mini world's model (defaults: docs/mini_world.md's calibrated prototype)."""

    resolution: int = 16
    channels: int = 3
    patch_size: int = 2
    num_layers: int = 3
    num_heads: int = 2
    head_dim: int = 32
    text_width: int = 64
    text_layers: int = 1
    text_heads: int = 2
    max_length: int = 16
    vocab_words: tuple[str, ...] = field(default_factory=tuple)
    qk_norm: str | None = None
    #: The feed-forward GELU of the transformer blocks: "tanh" (SD3's ``gelu-approximate``) or
    #: "exact" (erf). ATen's float tanh is not vectorised on x86 CPUs, so the tanh GELU costs
    #: 2-3x the exact one there (``benchmarks/step_cost.py --sections gelu`` times the call).
    ff_gelu: str = "tanh"

    def __post_init__(self) -> None:
        if self.ff_gelu not in FF_GELU:
            raise ValueError(f"ff_gelu must be one of {sorted(FF_GELU)}, got {self.ff_gelu!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["vocab_words"] = list(self.vocab_words)
        return d


def build_tiny_flow_model(
    cfg: TinyModelConfig | None = None,
    vocab_words: Sequence[str] | None = None,
    seed: int = 0,
) -> FlowModel:
    """A random pixel-space `FlowModel` (SD3 transformer + 1-layer CLIP text tower) from ``cfg``.

    ``vocab_words`` (default ``cfg.vocab_words``) feed `build_tokenizer`. Weights are drawn from
    ``seed`` without touching the global RNG state.
    """
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = cfg or TinyModelConfig()
    words = list(vocab_words if vocab_words is not None else cfg.vocab_words)
    if cfg.resolution % cfg.patch_size:
        raise ValueError(f"resolution {cfg.resolution} not divisible by patch {cfg.patch_size}")
    tok = build_tokenizer(words, cfg.max_length)
    inner = cfg.num_heads * cfg.head_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text = CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=len(tok),
                hidden_size=cfg.text_width,
                intermediate_size=4 * cfg.text_width,
                num_hidden_layers=cfg.text_layers,
                num_attention_heads=cfg.text_heads,
                max_position_embeddings=cfg.max_length,
                projection_dim=cfg.text_width,
                hidden_act="gelu",
                pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
            )
        )
        transformer = SD3Transformer2DModel(
            sample_size=cfg.resolution,
            patch_size=cfg.patch_size,
            in_channels=cfg.channels,
            out_channels=cfg.channels,
            num_layers=cfg.num_layers,
            attention_head_dim=cfg.head_dim,
            num_attention_heads=cfg.num_heads,
            joint_attention_dim=cfg.text_width,
            caption_projection_dim=inner,
            pooled_projection_dim=cfg.text_width,
            pos_embed_max_size=cfg.resolution // cfg.patch_size,
            qk_norm=cfg.qk_norm,
        )
    set_ff_gelu(transformer, cfg.ff_gelu)
    return FlowModel(
        transformer,
        ClipPromptEncoder(text, tok),
        kind="pixel",
        resolution=cfg.resolution,
        channels=cfg.channels,
        meta={"tiny_config": cfg.to_dict() | {"vocab_words": words}, "seed": seed},
    )


# --------------------------------------------------------------------------------------------
# tiny SD3 pipeline
# --------------------------------------------------------------------------------------------
def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP byte-level alphabet: the printable stand-in character of each byte."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_bpe_files(folder: str | os.PathLike[str], words: Sequence[str]) -> Path:
    """Write a tiny CLIP BPE ``vocab.json`` + ``merges.txt``: the 256 byte symbols (plain and
    word-final ``</w>``), left-to-right merges spelling each of ``words``, and CLIP's
    ``<|startoftext|>`` / ``<|endoftext|>``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    alphabet = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for c in alphabet:
        vocab[c] = len(vocab)
    for c in alphabet:
        vocab[c + "</w>"] = len(vocab)
    merges: list[str] = []
    for word in words:
        symbols = list(word.lower())
        if not symbols:
            continue
        symbols[-1] += "</w>"
        while len(symbols) > 1:
            a, b = symbols[0], symbols[1]
            if f"{a} {b}" not in merges:
                merges.append(f"{a} {b}")
            vocab.setdefault(a + b, len(vocab))
            symbols = [a + b, *symbols[2:]]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return out


def build_t5_tokenizer(words: Sequence[str], max_length: int) -> Any:
    """A tiny Unigram T5 tokenizer: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, whole words, and
    single characters so that any lowercase text is covered."""
    from transformers import T5TokenizerFast

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    seen = {p for p, _ in pieces}
    for w in words:
        if "▁" + w.lower() not in seen:
            pieces.append(("▁" + w.lower(), -2.0))
            seen.add("▁" + w.lower())
    pieces.append(("▁", -4.0))
    for c in "abcdefghijklmnopqrstuvwxyz0123456789\"',.:;!?-()":
        pieces.append((c, -6.0))
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=int(max_length))


def build_tiny_sd3_pipeline(
    *,
    resolution: int = 16,
    seed: int = 0,
    words: Sequence[str] = DEFAULT_SD3_WORDS,
    clip_max_length: int = 16,
    t5_max_length: int = 16,
) -> Any:
    """A random `StableDiffusion3Pipeline` of SD3.5's shape at toy size (built in memory)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
    )

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_bpe_files(tmp, words)
        clip_tok = CLIPTokenizer.from_pretrained(tmp, model_max_length=clip_max_length)
    t5_tok = build_t5_tokenizer(words, t5_max_length)

    def clip(width: int) -> Any:
        return CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=len(clip_tok),
                hidden_size=width,
                intermediate_size=2 * width,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=clip_max_length,
                projection_dim=width,
                hidden_act="gelu",
                bos_token_id=clip_tok.bos_token_id,
                eos_token_id=clip_tok.eos_token_id,
                pad_token_id=clip_tok.pad_token_id,
            )
        )

    clip_l, clip_g, t5_dim = 16, 24, 48  # CLIP-L / CLIP-G widths, T5 width (> 16 + 24: padding)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder, text_encoder_2 = clip(clip_l), clip(clip_g)
        text_encoder_3 = T5EncoderModel(
            T5Config(
                vocab_size=len(t5_tok),
                d_model=t5_dim,
                d_kv=8,
                d_ff=64,
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=16,
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=resolution,
            use_quant_conv=False,
            use_post_quant_conv=False,
            scaling_factor=1.5305,
            shift_factor=0.0609,
        )
        latent = resolution // 2
        transformer = SD3Transformer2DModel(
            sample_size=latent,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=t5_dim,
            caption_projection_dim=16,
            pooled_projection_dim=clip_l + clip_g,
            pos_embed_max_size=latent // 2,
            dual_attention_layers=(0,),
            qk_norm="rms_norm",
        )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tok,
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tok,
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tok,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sd3_pipeline_dir(
    path: str | os.PathLike[str],
    *,
    resolution: int = 16,
    seed: int = 0,
    words: Sequence[str] = DEFAULT_SD3_WORDS,
    max_length: int = 16,
) -> Path:
    """Write a tiny random SD3(.5)-shaped diffusers pipeline folder at ``path``; returns it.

    Load it with ``FlowModel.from_pretrained(path, max_sequence_length=...)`` exactly as the
    paper profile loads ``stabilityai/stable-diffusion-3.5-medium``. ``max_length`` is both
    the CLIP tokenizers' and T5's token budget.
    """
    pipe = build_tiny_sd3_pipeline(
        resolution=resolution,
        seed=seed,
        words=words,
        clip_max_length=max_length,
        t5_max_length=max_length,
    )
    out = Path(path)
    pipe.save_pretrained(out)
    info = {"resolution": resolution, "max_sequence_length": max_length, "meta": {"tiny": True}}
    (out / SD3_CONFIG_NAME).write_text(json.dumps(info, indent=2, sort_keys=True))
    return out
