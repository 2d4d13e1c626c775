"""``ocr``: Flow-GRPO's definition, and the real PP-OCR models (RapidOCR, offline) reading
text rendered with Pillow at a large size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from opd.rewards import get_scorer
from opd.rewards.paper.ocr import levenshtein, ocr_score, target_text


def render(text: str, size: tuple[int, int] = (480, 160)) -> np.ndarray:
    img = Image.new("RGB", size, "white")
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 56)
    except OSError:  # no DejaVu: Pillow's bundled scalable font
        font = ImageFont.load_default(size=64)
    ImageDraw.Draw(img).text((20, 45), text, fill="black", font=font)
    return np.asarray(img)


def test_levenshtein_and_the_reward_definition() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0
    assert target_text('A sign that says "Hello World" in neon') == "Hello World"
    assert target_text("no quotes", {"text": "Override"}) == "Override"
    with pytest.raises(ValueError, match="no quoted text"):
        target_text("a sign with no quotes")
    # spaces removed, case folded; containment is a perfect match
    assert ocr_score("OPEN 24 hours hello world!", "Hello World") == 1.0
    assert ocr_score("helo world", "Hello World") == pytest.approx(1 - 1 / 10)
    assert ocr_score("", "Hello") == 0.0  # distance capped at the target length
    assert ocr_score("zzzzzzzzzzzzzzzzzzzz", "ab") == 0.0


def test_pp_ocr_reads_rendered_text() -> None:
    scorer = get_scorer("ocr", threads=1)
    images = np.stack([render("Hello World"), render("Hello World"), render("")])
    prompts = [
        'A shop sign that reads "Hello World"',
        'A shop sign that reads "Goodbye Moon"',
        'A shop sign that reads "Hello World"',
    ]
    text = scorer.read(images[0]).replace(" ", "").lower()
    assert text == "helloworld"
    scores = scorer(images, prompts, [{}, {}, {}])
    assert scores[0] == 1.0
    assert scores[1] < 0.5
    assert scores[2] == 0.0  # nothing to read: the whole target is missing


@pytest.mark.slow
def test_ocr_served_by_the_service_cli_over_json_lines() -> None:
    """The real server side: ``python -m opd.rewards.paper.service serve --stdio``."""
    import sys

    from opd.config import REPO_ROOT
    from opd.rewards.paper.service import RemoteScorer, SubprocessClient

    cmd = [sys.executable, "-m", "opd.rewards.paper.service", "serve", "--stdio"]
    cmd += ["--scorer", "ocr", "--option", "threads=1"]
    scorer = RemoteScorer(SubprocessClient(cmd, timeout=120, cwd=str(REPO_ROOT)))
    try:
        got = scorer(np.stack([render("Hello World")]), ['a sign: "Hello World"'], [{}])
    finally:
        scorer.close()
    assert got.tolist() == [1.0]
