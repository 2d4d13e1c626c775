"""GenEval (Ghosh et al., 2023): decision rules over detections, the detector service, the scorer.

The benchmark: 553 prompts x 4 images in six tasks (``single_object``, ``two_object``,
``counting``, ``colors``, ``position``, ``color_attr``); each prompt's metadata says which
objects must appear (``include``: class, count, optional colour, optional position relative to
an earlier include group) and which must not (``exclude``: class, count). An image is correct
when every clause holds; a task's score is the fraction of correct images and the overall score
is the mean of the six task scores (:func:`geneval_aggregate`).

This module restates GenEval's published rules in pure Python over detections, so they are
tested without the detector:

* per class, detections above the confidence threshold (0.3; 0.9 for ``counting`` prompts),
  by decreasing confidence, at most 16, then greedy non-maximum suppression at IoU
  ``max_overlap`` (1.0: none), IoU with GenEval's inclusive-pixel ``+1`` areas;
* ``include``: the ``count`` most confident objects of the class must exist; with ``color``, at
  least ``count`` of them must be classified as that colour; with ``position: [relation,
  group]``, every one of them must stand in ``relation`` to every object of the referenced
  (earlier, matched) group; an unmatched group fails the clause;
* ``exclude``: fewer than ``count`` detections of the class;
* relative position of A to B (:func:`relative_position`): the centre offset, shrunk on each
  axis by ``0.1 x (width_A + width_B)`` (resp. heights) towards zero; no relation if both shrunk
  components are ~0; otherwise, dividing by the unshrunk offset's norm, ``left of`` if
  dx < -0.5, ``right of`` if dx > 0.5, ``above`` if dy < -0.5, ``below`` if dy > 0.5 (image y
  grows downwards).

The detector (Mask2Former Swin-S through mmdet 2.x / mmcv-full 1.x, colour by zero-shot CLIP
ViT-L/14 on the object's mask composited on grey and cropped to its box, with GenEval's three
prompt templates and ten colours) runs as the local backend of the ``geneval`` scorer inside the
GenEval image (its stack conflicts with the trainer's), served with
``opd.rewards.paper.service``; the trainer's ``geneval`` scorer is a client of that service by
default. This file and ``service.py`` use only the standard library, numpy and Pillow at import
time and run on Python 3.10, so the GenEval image can copy them without the ``opd`` package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

try:  # inside the opd package
    from opd.rewards.paper import service
except ImportError:  # pragma: no cover - standalone copy in the GenEval image
    import service  # type: ignore[no-redef]

#: The detector's 80 classes in COCO category order (GenEval's object names).
CLASSNAMES: tuple[str, ...] = (
    *("person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat"),
    *("traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat"),
    *("dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack"),
    *("umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball"),
    *("kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket"),
    *("bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple"),
    *("sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair"),
    *("couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop"),
    *("computer mouse", "tv remote", "computer keyboard", "cell phone", "microwave", "oven"),
    *("toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear"),
    *("hair drier", "toothbrush"),
)
COLORS: tuple[str, ...] = (
    *("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"),
)
COLOR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c} {obj}",
    "a photo of a {c}-colored {obj}",
    "a photo of a {c} object",
)
TASKS: tuple[str, ...] = (
    *("single_object", "two_object", "counting", "colors", "position", "color_attr"),
)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


@dataclasses.dataclass
class Detection:
    """One detected object: class name, confidence, box ``[x1, y1, x2, y2]`` in pixels, and
    (once classified) its colour name; ``mask`` (H, W bool) is kept on the detector side only."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    color: str | None = None
    mask: Any = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "score": float(self.score),
            "box": [float(v) for v in self.box],
        }
        if self.color is not None:
            out["color"] = self.color
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Detection:
        box = tuple(float(v) for v in d["box"][:4])
        return cls(str(d["label"]), float(d["score"]), box, d.get("color"))  # type: ignore[arg-type]


@dataclasses.dataclass
class GenEvalRules:
    """GenEval's thresholds (the defaults of its evaluation script)."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    max_overlap: float = 1.0  # NMS IoU threshold; 1.0 disables NMS
    position_threshold: float = 0.1

    @property
    def min_threshold(self) -> float:
        return min(self.threshold, self.counting_threshold)


def compute_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU with GenEval's inclusive-pixel areas ``(x2 - x1 + 1) * (y2 - y1 + 1)``."""

    def area(b: Sequence[float]) -> float:
        return max(b[2] - b[0] + 1, 0) * max(b[3] - b[1] + 1, 0)

    inter = area(
        [max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]),
         min(box_a[3], box_b[3])]
    )  # fmt: skip
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0.0


def select_objects(
    detections: Sequence[Detection], tag: str, rules: GenEvalRules | None = None
) -> dict[str, list[Detection]]:
    """Class -> kept detections, most confident first (threshold, top-k, greedy NMS)."""
    rules = rules or GenEvalRules()
    threshold = rules.counting_threshold if tag == "counting" else rules.threshold
    by_class: dict[str, list[Detection]] = {}
    for det in detections:
        by_class.setdefault(det.label, []).append(det)
    out: dict[str, list[Detection]] = {}
    for label, dets in by_class.items():
        order = sorted(dets, key=lambda d: -d.score)  # stable: ties keep detector order
        order = [d for d in order if d.score > threshold][: rules.max_objects]
        kept: list[Detection] = []
        while order:
            best = order.pop(0)
            kept.append(best)
            if rules.max_overlap < 1:
                order = [d for d in order if compute_iou(best.box, d.box) < rules.max_overlap]
        if kept:
            out[label] = kept
    return out


def relative_position(
    box_a: Sequence[float], box_b: Sequence[float], threshold: float = 0.1
) -> set[str]:
    """Relations of A to B (``left of``, ``right of``, ``above``, ``below``) by GenEval's rule."""
    a = np.asarray(box_a[:4], dtype=np.float64).reshape(2, 2)
    b = np.asarray(box_b[:4], dtype=np.float64).reshape(2, 2)
    offset = a.mean(axis=0) - b.mean(axis=0)
    dims = np.abs(a[1] - a[0]) + np.abs(b[1] - b[0])
    revised = np.maximum(np.abs(offset) - threshold * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rel: set[str] = set()
    if dx < -0.5:
        rel.add("left of")
    if dx > 0.5:
        rel.add("right of")
    if dy < -0.5:
        rel.add("above")
    if dy > 0.5:
        rel.add("below")
    return rel


ColorFn = Callable[[str, list[Detection]], list[str]]


def _colors_from_labels(classname: str, objs: list[Detection]) -> list[str]:
    return [o.color or "" for o in objs]


def evaluate(
    objects: dict[str, list[Detection]],
    metadata: dict[str, Any],
    *,
    colors_of: ColorFn = _colors_from_labels,
    position_threshold: float = 0.1,
) -> tuple[bool, str]:
    """GenEval's verdict for one image: (correct, reasons for failure).

    ``objects`` as from :func:`select_objects`; ``colors_of(classname, objs)`` gives the colour
    of each of ``objs`` (default: their ``color`` labels, as set by the detector service).
    """
    correct = True
    reasons: list[str] = []
    groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        cls, count = req["class"], int(req["count"])
        matched = True
        found = objects.get(cls, [])[:count]
        if len(found) < count:
            correct = matched = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = colors_of(cls, found)
                hits = colors.count(req["color"])
                if hits < count:
                    correct = matched = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    reasons.append(
                        f"expected {req['color']} {cls}>={count}, found {hits} {req['color']}; "
                        f"and {seen}"
                    )
            if "position" in req and matched:
                relation, target = req["position"][0], int(req["position"][1])
                targets = groups[target] if target < len(groups) else None
                if targets is None:
                    correct = matched = False
                    reasons.append(f"no target for {cls} to be {relation}")
                else:
                    for obj in found:
                        for tgt in targets:
                            rels = relative_position(obj.box, tgt.box, position_threshold)
                            if relation not in rels:
                                correct = matched = False
                                reasons.append(
                                    f"expected {cls} {relation} target, found "
                                    f"{' and '.join(sorted(rels)) or 'no relation'}"
                                )
                                break
                        if not matched:
                            break
        groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        cls, count = req["class"], int(req["count"])
        n = len(objects.get(cls, []))
        if n >= count:
            correct = False
            reasons.append(f"expected {cls}<{count}, found {n}")
    return correct, "\n".join(reasons)


def evaluate_detections(
    detections: Sequence[Detection],
    metadata: dict[str, Any],
    rules: GenEvalRules | None = None,
    colors_of: ColorFn = _colors_from_labels,
) -> tuple[bool, str]:
    """Select objects for the prompt's tag, then :func:`evaluate`."""
    rules = rules or GenEvalRules()
    objects = select_objects(detections, str(metadata.get("tag", "")), rules)
    return evaluate(
        objects, metadata, colors_of=colors_of, position_threshold=rules.position_threshold
    )


def geneval_aggregate(scores: np.ndarray, metadata: Sequence[dict[str, Any]]) -> float:
    """GenEval's overall score: the mean over tasks (tags) of each task's mean correctness."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(metadata):
        raise ValueError(f"{len(scores)} scores for {len(metadata)} metadata entries")
    by_tag: dict[str, list[float]] = {}
    for s, m in zip(scores, metadata, strict=True):
        by_tag.setdefault(str(m.get("tag", "all")), []).append(float(s))
    if not by_tag:
        return float("nan")
    return float(np.mean([np.mean(v) for v in by_tag.values()]))


def task_scores(scores: np.ndarray, metadata: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per-task accuracy (GenEval's task breakdown)."""
    by_tag: dict[str, list[float]] = {}
    for s, m in zip(np.asarray(scores, float), metadata, strict=True):
        by_tag.setdefault(str(m.get("tag", "all")), []).append(float(s))
    return {k: float(np.mean(v)) for k, v in by_tag.items()}


# --------------------------------------------------------------------------------------------
# the detector side (GenEval image: mmdet 2.x, mmcv-full 1.x, open_clip)
# --------------------------------------------------------------------------------------------
class Mask2FormerDetector:
    """Mask2Former (mmdet 2.x) + zero-shot CLIP colours; the local backend of ``geneval``.

    ``config``: the mmdet config file (default: mmdet's
    ``configs/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py``); ``checkpoint``:
    the matching weights (GenEval's ``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth``);
    ``sha256``: its pinned digest (checked before loading). Colour: open_clip ``clip_arch``
    with ``clip_pretrained`` weights, crops on ``bgcolor`` (GenEval: ``#999``).
    """

    def __init__(
        self,
        checkpoint: str,
        *,
        config: str | None = None,
        sha256: str | None = None,
        allow_unpinned: bool = False,
        device: str = "cuda",
        clip_arch: str = "ViT-L-14",
        clip_pretrained: str = "openai",
        bgcolor: str = "#999",
        crop: bool = True,
        rules: GenEvalRules | None = None,
    ) -> None:
        import os

        import mmdet
        import open_clip
        import torch
        from mmdet.apis import init_detector

        if config is None:  # mmdet's own config: pip installs keep it under .mim/
            name = os.path.join("mask2former", "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py")
            root = os.path.dirname(mmdet.__file__)
            candidates = [os.path.join(root, ".mim", "configs", name)]
            candidates.append(os.path.join(root, "..", "configs", name))
            config = next((c for c in candidates if os.path.isfile(c)), candidates[0])
        if sha256 or not allow_unpinned:
            _verify_standalone(checkpoint, sha256, allow_unpinned)
        self.torch = torch
        self.device = device
        self.detector = init_detector(config, checkpoint, device=device)
        self.clip, _, self.transform = open_clip.create_model_and_transforms(
            clip_arch, pretrained=clip_pretrained, device=device
        )
        self.clip.eval()
        self.tokenizer = open_clip.get_tokenizer(clip_arch)
        self.bgcolor, self.crop = bgcolor, crop
        self.rules = rules or GenEvalRules()
        self._classifiers: dict[str, Any] = {}

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Every detection above the lower of the two thresholds, with its mask."""
        from mmdet.apis import inference_detector

        result = inference_detector(self.detector, image[:, :, ::-1].copy())  # mmdet wants BGR
        bbox = result[0] if isinstance(result, tuple) else result
        segm = result[1] if isinstance(result, tuple) and len(result) > 1 else None
        out: list[Detection] = []
        for idx, name in enumerate(CLASSNAMES):
            for k, row in enumerate(bbox[idx]):
                if float(row[4]) > self.rules.min_threshold:
                    mask = None if segm is None else np.asarray(segm[idx][k], dtype=bool)
                    box = tuple(float(v) for v in row[:4])
                    out.append(Detection(name, float(row[4]), box, None, mask))  # type: ignore[arg-type]
        return out

    def _classifier(self, classname: str) -> Any:
        torch = self.torch
        if classname not in self._classifiers:
            weights = []
            with torch.no_grad():
                for c in COLORS:
                    texts = [t.format(c=c, obj=classname) for t in COLOR_TEMPLATES]
                    emb = self.clip.encode_text(self.tokenizer(texts).to(self.device))
                    emb = emb / emb.norm(dim=-1, keepdim=True)
                    mean = emb.mean(dim=0)
                    weights.append(mean / mean.norm())
            self._classifiers[classname] = torch.stack(weights, dim=1)
        return self._classifiers[classname]

    def colors(self, image: np.ndarray, classname: str, objs: list[Detection]) -> list[str]:
        """Zero-shot colour of each object (mask on grey, cropped to its box)."""
        from PIL import Image

        torch = self.torch
        pil = Image.fromarray(image).convert("RGB")
        if self.bgcolor == "original":
            blank = pil.copy()
        else:
            blank = Image.new("RGB", pil.size, self.bgcolor)
        crops = []
        for obj in objs:
            im = pil
            if obj.mask is not None:
                im = Image.composite(pil, blank, Image.fromarray(obj.mask.astype(np.uint8) * 255))
            if self.crop:
                im = im.crop(tuple(obj.box))
            crops.append(self.transform(im))
        with torch.no_grad():
            feats = self.clip.encode_image(torch.stack(crops).to(self.device))
            feats = feats / feats.norm(dim=-1, keepdim=True)
            logits = 100.0 * feats @ self._classifier(classname)
        labels = [COLORS[int(i)] for i in logits.argmax(dim=1)]
        for obj, lab in zip(objs, labels, strict=True):
            obj.color = lab
        return labels

    def __call__(
        self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        scores, details = [], []
        for image, meta in zip(images, metadata, strict=True):
            image = np.ascontiguousarray(image)
            objects = select_objects(self.detect(image), str(meta.get("tag", "")), self.rules)
            ok, reason = evaluate(
                objects,
                meta,
                colors_of=lambda cls, objs, im=image: self.colors(im, cls, objs),
                position_threshold=self.rules.position_threshold,
            )
            scores.append(1.0 if ok else 0.0)
            details.append(
                {
                    "correct": ok,
                    "reason": reason,
                    "tag": meta.get("tag"),
                    "objects": [o.to_dict() for objs in objects.values() for o in objs],
                }
            )
        return np.asarray(scores), details

    aggregate = staticmethod(geneval_aggregate)


def _verify_standalone(path: str, sha256: str | None, allow_unpinned: bool) -> None:
    try:
        from opd.rewards.paper.weights import verify  # deferred: standalone copy lacks opd
    except ImportError:  # pragma: no cover - standalone: a local check
        import hashlib

        if not sha256:
            if allow_unpinned:
                return
            raise RuntimeError(f"{path}: no SHA-256 pinned for the detector weights") from None
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != sha256.lower():
            raise RuntimeError(f"{path}: SHA-256 {h.hexdigest()} != pinned {sha256}") from None
        return
    verify(path, sha256, allow_unpinned=allow_unpinned)


def _local_detector(rules: dict[str, Any] | None = None, **options: Any) -> Mask2FormerDetector:
    return Mask2FormerDetector(rules=GenEvalRules(**(rules or {})), **options)


def make_geneval(backend: str = "http", **options: Any) -> Any:
    """The ``geneval`` scorer: a client of the GenEval service (``http``, default url
    ``http://127.0.0.1:18085``, or ``subprocess``) or, with ``backend="local"`` (inside the
    GenEval image), the detector itself. Scores are 0/1 per image; the scorer's ``aggregate``
    is GenEval's overall score (mean of the task accuracies)."""
    return service.backend_scorer(
        "geneval",
        backend,
        _local_detector,
        options,
        default_url="http://127.0.0.1:18085",
        aggregate=geneval_aggregate,
    )


try:
    from opd.registry import SCORERS
except ImportError:  # pragma: no cover - standalone copy
    SCORERS = None
if SCORERS is not None:
    SCORERS.register("geneval")(make_geneval)


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - GenEval image
    """Serve the detector standalone (the GenEval image has no opd package)."""
    import argparse

    p = argparse.ArgumentParser(description="GenEval detector service (protocol v1)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--config", default=None)
    p.add_argument("--sha256", default=None)
    p.add_argument("--allow-unpinned", action="store_true")
    p.add_argument("--device", default="cuda")
    p.add_argument("--host", default=service.DEFAULT_HOST)
    p.add_argument("--port", type=int, default=18085)
    p.add_argument("--stdio", action="store_true")
    args = p.parse_args(argv)
    det = Mask2FormerDetector(
        args.checkpoint,
        config=args.config,
        sha256=args.sha256,
        allow_unpinned=args.allow_unpinned,
        device=args.device,
    )
    if args.stdio:
        service.serve_stdio(det)
        return 0
    server = service.make_server(det, host=args.host, port=args.port, name="geneval")
    print(f"[geneval] serving on http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
