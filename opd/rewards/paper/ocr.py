"""``ocr``: Flow-GRPO's text-rendering reward on the PP-OCR models, run offline by RapidOCR.

Definition (Flow-GRPO's OCR reward, also the paper's OCR metric): the target is the text
between the first pair of double quotes of the prompt (or ``metadata["text"]``); the image is
read by PP-OCR (detection + recognition, no angle classifier); the recognised pieces with a
positive confidence are concatenated; spaces are removed and both strings lower-cased. If the
target occurs in the recognised text the distance is 0, else it is the Levenshtein distance,
capped at the target's length; the score is ``1 - distance / len(target)`` in [0, 1].

Engine: ``rapidocr`` (ONNX Runtime) ships PP-OCR detection and recognition models inside its
wheel, so this runs with no download; ``det_model_path`` / ``rec_model_path`` (and
``rec_keys_path``) point it at other PP-OCR ONNX exports (e.g. the English PP-OCRv4 models
that PaddleOCR's ``lang="en"`` uses, as in Flow-GRPO) -- pinned in ``scorer_options.ocr``.
An OCR engine failure raises (``on_error: "raise"``); Flow-GRPO scored such an image 0, which
``on_error: "zero"`` reproduces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from opd.registry import SCORERS
from opd.rewards.paper.service import backend_scorer
from opd.rewards.text import levenshtein


def target_text(prompt: str, metadata: dict[str, Any] | None = None) -> str:
    """The text an image must show: ``metadata["text"]`` or the prompt's first quoted span."""
    if metadata and metadata.get("text"):
        return str(metadata["text"])
    parts = prompt.split('"')
    if len(parts) < 3:
        raise ValueError(f"OCR prompt has no quoted text: {prompt!r}")
    return parts[1]


def ocr_score(recognized: str, target: str) -> float:
    """Flow-GRPO's OCR reward of recognised text against the target."""
    rec = recognized.replace(" ", "").lower()
    tgt = target.replace(" ", "").lower()
    if not tgt:
        raise ValueError("empty OCR target")
    dist = 0 if tgt in rec else levenshtein(rec, tgt)
    return 1.0 - min(dist, len(tgt)) / len(tgt)


class OCRScorer:
    """PP-OCR through RapidOCR; images uint8 (N, H, W, 3), one engine call per image."""

    def __init__(
        self,
        *,
        device: str = "cpu",
        det_model_path: str | None = None,
        rec_model_path: str | None = None,
        rec_keys_path: str | None = None,
        text_score: float = 0.5,
        det_limit_side_len: int = 960,
        det_limit_type: str = "max",
        threads: int = 1,
        on_error: str = "raise",
        params: dict[str, Any] | None = None,
    ) -> None:
        if on_error not in ("raise", "zero"):
            raise ValueError(f"on_error must be 'raise' or 'zero', got {on_error!r}")
        self.device = device
        self.on_error = on_error
        self.params: dict[str, Any] = {
            "Global.log_level": "error",
            "Global.use_cls": False,  # Flow-GRPO: use_angle_cls=False
            # PaddleOCR's drop_score (0.5) drops low-confidence pieces, as in Flow-GRPO
            "Global.text_score": float(text_score),
            "EngineConfig.onnxruntime.intra_op_num_threads": int(threads),
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            "EngineConfig.onnxruntime.use_cuda": device.startswith("cuda"),
            # PaddleOCR's detector resizing (det_limit_side_len 960, type max), as in Flow-GRPO
            "Det.limit_side_len": int(det_limit_side_len),
            "Det.limit_type": det_limit_type,
        }
        for key, value in (
            ("Det.model_path", det_model_path),
            ("Rec.model_path", rec_model_path),
            ("Rec.rec_keys_path", rec_keys_path),
        ):
            if value:
                self.params[key] = value
        self.params.update(params or {})
        self._engine: Any = None

    @property
    def engine(self) -> Any:
        if self._engine is None:  # lazy: the models load on the first call
            from rapidocr import RapidOCR

            self._engine = RapidOCR(params=self.params)
        return self._engine

    def read(self, image: np.ndarray) -> str:
        """The recognised text of one image (pieces with confidence > 0, concatenated)."""
        out = self.engine(np.ascontiguousarray(image))
        texts = getattr(out, "txts", None) or ()
        scores = getattr(out, "scores", None) or ()
        return "".join(t for t, s in zip(texts, scores, strict=False) if float(s) > 0)

    def __call__(
        self,
        images: np.ndarray,
        prompts: Sequence[str],
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> np.ndarray:
        metadata = list(metadata) if metadata is not None else [{}] * len(images)
        if not (len(images) == len(prompts) == len(metadata)):
            raise ValueError(f"{len(images)} images, {len(prompts)} prompts, {len(metadata)} meta")
        out = np.zeros(len(images), dtype=np.float64)
        for i, (image, prompt, meta) in enumerate(zip(images, prompts, metadata, strict=True)):
            target = target_text(prompt, meta)
            try:
                text = self.read(image)
            except Exception:
                if self.on_error == "zero":
                    out[i] = 0.0
                    continue
                raise
            out[i] = ocr_score(text, target)
        return out


@SCORERS.register("ocr")
def make_ocr(backend: str = "local", **options: Any) -> Any:
    """The ``ocr`` scorer (local RapidOCR; ``backend: http|subprocess`` for a remote one)."""
    return backend_scorer("ocr", backend, OCRScorer, options)
