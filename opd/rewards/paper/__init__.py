"""The paper profile's scorers, registered under Table 1's names.

``geneval`` (GenEval: Mask2Former + CLIP colours behind a service, decision rules in pure
Python), ``ocr`` (Flow-GRPO's OCR reward on PP-OCR via RapidOCR), ``pickscore``, ``clipscore``,
``aesthetic`` and ``hpsv21`` (CLIP-family models), ``imagereward`` (ImageReward-v1.0) and
``unifiedreward`` (a UnifiedReward judge behind an OpenAI-compatible endpoint). Every scorer
loads its model lazily on the first call, scores in batches on a configurable device, and takes
its model ids, revisions and checksums from ``scorer_options.<name>`` in the config. Scorers
whose stacks conflict with the trainer's run in their own environment behind
:mod:`opd.rewards.paper.service`'s protocol; :mod:`opd.rewards.paper.weights` pins and safely
loads third-party pickles.
"""

from opd.rewards.paper import (  # noqa: F401 - imported to register the scorers
    clip_scorers,
    geneval,
    imagereward,
    ocr,
    unifiedreward,
)

#: Table 1's scorer names, in column order.
PAPER_SCORERS = (
    "geneval",
    "ocr",
    "pickscore",
    "clipscore",
    "hpsv21",
    "aesthetic",
    "imagereward",
    "unifiedreward",
)

__all__ = ["PAPER_SCORERS"]
