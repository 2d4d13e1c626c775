"""GenEval's decision rules on constructed detections, against verdicts worked out by hand from
GenEval's published rules (thresholds, counting, colours, relative position, exclusions, the
overall score as a mean of task accuracies), and the standalone copy used by the GenEval image."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from opd.rewards.paper.geneval import (
    Detection,
    GenEvalRules,
    compute_iou,
    evaluate_detections,
    geneval_aggregate,
    relative_position,
    select_objects,
    task_scores,
)


def det(label: str, score: float, box=(0, 0, 10, 10), color: str | None = None) -> Detection:
    return Detection(label, score, tuple(float(v) for v in box), color)


# ----------------------------------------------------------------------------- geometry
def test_iou_uses_inclusive_pixel_areas() -> None:
    assert compute_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    # 10x10 boxes overlapping in columns 5..9: 50 / (100 + 100 - 50)
    assert compute_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(1 / 3)
    assert compute_iou((0, 0, 9, 9), (20, 20, 29, 29)) == 0.0


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # centres (5, 5) vs (55, 5): offset (-50, 0), shrunk by 0.1 * (10 + 10) -> (-48, 0)
        ((0, 0, 10, 10), (50, 0, 60, 10), {"left of"}),
        ((50, 0, 60, 10), (0, 0, 10, 10), {"right of"}),
        # offset (-20, -20) -> shrunk (-18, -18) / 28.28 = (-0.64, -0.64): both relations
        ((0, 0, 10, 10), (20, 20, 30, 30), {"left of", "above"}),
        ((0, 40, 10, 50), (0, 0, 10, 10), {"below"}),
        # offset (-1, 0) is inside the 2-pixel margin on x and 0 on y: no relation
        ((0, 0, 10, 10), (1, 0, 11, 10), set()),
        # offset (-30, -8) -> (-28, -6) / 31.05 = (-0.90, -0.19): left only
        ((0, 0, 10, 10), (30, 8, 40, 18), {"left of"}),
    ],
)
def test_relative_position(a, b, expected) -> None:
    assert relative_position(a, b) == expected


# ----------------------------------------------------------------------------- selection
def test_select_objects_thresholds_order_topk_and_nms() -> None:
    dets = [det("cat", 0.5), det("cat", 0.95), det("cat", 0.2), det("dog", 0.92)]
    objs = select_objects(dets, "two_object")
    assert [d.score for d in objs["cat"]] == [0.95, 0.5]  # > 0.3, most confident first
    objs = select_objects(dets, "counting")  # counting prompts: > 0.9
    assert [d.score for d in objs["cat"]] == [0.95] and "dog" in objs
    many = [det("cup", 0.4 + i / 100) for i in range(20)]
    assert len(select_objects(many, "single_object")["cup"]) == 16
    overlapping = [det("cup", 0.8, (0, 0, 9, 9)), det("cup", 0.7, (1, 0, 10, 9))]
    assert (
        len(select_objects(overlapping, "counting", GenEvalRules(counting_threshold=0.5))["cup"])
        == 2
    )
    nms = GenEvalRules(max_overlap=0.5)
    assert len(select_objects(overlapping, "two_object", nms)["cup"]) == 1


# ----------------------------------------------------------------------------- verdicts
COUNT2 = {
    "tag": "counting",
    "include": [{"class": "cat", "count": 2}],
    "exclude": [{"class": "cat", "count": 3}],
    "prompt": "a photo of two cats",
}


def test_counting_exactly_n_confident_objects() -> None:
    ok, reason = evaluate_detections([det("cat", 0.95), det("cat", 0.92), det("cat", 0.5)], COUNT2)
    assert ok, reason  # the 0.5 cat is below the counting threshold
    ok, reason = evaluate_detections([det("cat", 0.95), det("cat", 0.92), det("cat", 0.91)], COUNT2)
    assert not ok and "expected cat<3, found 3" in reason
    ok, reason = evaluate_detections([det("cat", 0.95), det("cat", 0.85)], COUNT2)
    assert not ok and "expected cat>=2, found 1" in reason


def test_single_and_two_object_use_the_general_threshold() -> None:
    meta = {"tag": "single_object", "include": [{"class": "bench", "count": 1}]}
    assert not evaluate_detections([det("bench", 0.25)], meta)[0]
    assert evaluate_detections([det("bench", 0.31)], meta)[0]
    two = {
        "tag": "two_object",
        "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}],
    }
    assert evaluate_detections([det("cat", 0.4), det("dog", 0.35)], two)[0]
    assert not evaluate_detections([det("cat", 0.4)], two)[0]


def test_colors_check_the_most_confident_objects_only() -> None:
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}
    assert evaluate_detections([det("car", 0.8, color="red")], meta)[0]
    # the most confident car is blue; a red car lower down does not count
    ok, reason = evaluate_detections(
        [det("car", 0.9, color="blue"), det("car", 0.7, color="red")], meta
    )
    assert not ok and "expected red car>=1, found 0 red" in reason and "1 blue" in reason


def test_color_attr_needs_both_bindings() -> None:
    meta = {
        "tag": "color_attr",
        "include": [
            {"class": "bus", "count": 1, "color": "blue"},
            {"class": "dog", "count": 1, "color": "yellow"},
        ],
    }
    good = [det("bus", 0.9, color="blue"), det("dog", 0.8, color="yellow")]
    swapped = [det("bus", 0.9, color="yellow"), det("dog", 0.8, color="blue")]
    assert evaluate_detections(good, meta)[0]
    assert not evaluate_detections(swapped, meta)[0]


POSITION = {
    "tag": "position",
    "include": [
        {"class": "dog", "count": 1},
        {"class": "cat", "count": 1, "position": ["right of", 0]},
    ],
    "prompt": "a photo of a cat right of a dog",
}


def test_position_relative_to_the_target_group() -> None:
    dog, cat_right, cat_left = (0, 0, 10, 10), (50, 0, 60, 10), (-60, 0, -50, 10)
    assert evaluate_detections([det("dog", 0.9, dog), det("cat", 0.9, cat_right)], POSITION)[0]
    ok, reason = evaluate_detections([det("dog", 0.9, dog), det("cat", 0.9, cat_left)], POSITION)
    assert not ok and "expected cat right of target, found left of" in reason
    ok, reason = evaluate_detections([det("cat", 0.9, cat_right)], POSITION)
    assert not ok and "no target for cat to be right of" in reason
    # only the most confident dog is the target group (count 1)
    dets = [det("dog", 0.9, dog), det("dog", 0.5, (100, 0, 110, 10)), det("cat", 0.9, cat_right)]
    assert evaluate_detections(dets, POSITION)[0]


def test_overall_score_is_the_mean_of_task_accuracies() -> None:
    meta = [{"tag": "single_object"}] * 2 + [{"tag": "counting"}] * 4
    scores = np.array([1, 1, 0, 1, 1, 1], dtype=float)
    assert task_scores(scores, meta) == {"single_object": 1.0, "counting": 0.75}
    assert geneval_aggregate(scores, meta) == pytest.approx(0.875)  # not the image mean 5/6


def test_geneval_scorer_is_a_service_client_with_the_aggregate() -> None:
    from opd.rewards import get_scorer
    from opd.rewards.paper.service import RemoteScorer

    scorer = get_scorer("geneval", url="http://127.0.0.1:1", local={"checkpoint": "x"})
    assert isinstance(scorer, RemoteScorer)
    assert scorer.client.url == "http://127.0.0.1:1"
    assert scorer.aggregate(np.array([1.0, 0.0]), [{"tag": "a"}, {"tag": "b"}]) == 0.5


def test_standalone_copy_runs_without_the_opd_package(tmp_path: Path) -> None:
    """The GenEval image copies geneval.py and service.py alone (no opd package there)."""
    src = Path(__file__).resolve().parents[2] / "opd" / "rewards" / "paper"
    for name in ("geneval.py", "service.py"):
        shutil.copy(src / name, tmp_path / name)
    code = """
import json, sys
sys.modules["opd"] = None  # no opd package in the GenEval image
sys.path.insert(0, sys.argv[1])
import geneval, service
assert geneval.service is service and geneval.SCORERS is None
d = [geneval.Detection("dog", 0.9, (0, 0, 10, 10)), geneval.Detection("cat", 0.9, (50, 0, 60, 10))]
meta = json.loads(sys.argv[2])
print(json.dumps(geneval.evaluate_detections(d, meta)))
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), json.dumps(POSITION)],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert json.loads(out.stdout) == [True, ""]
