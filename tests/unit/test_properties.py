"""MINI.md's properties 3 and 4 and the recovery bar on synthetic evaluations (known answers)."""

import numpy as np
import pandas as pd
import pytest

from opd.analysis.properties import property_checks, write_property_checks

EVAL_SEEDS = [10, 11, 12, 13]
CFG = {
    "tasks": {"a": {"reward": {"s1": 1.0}}, "b": {"reward": {"s2": 1.0}}},
    "benchmarks": {
        "m1": {"scorer": "s1", "task": "a"},
        "m2": {"scorer": "s2", "task": "b", "bounds": [0.0, 4.0]},
        "held": {"scorer": "h", "task": "b"},  # not in b's reward: not b's own column
    },
}


def _rows(run, seed, step, column, values):
    return [
        {"run": run, "seed": seed, "step": step, "metric": column, "eval_seed": e, "value": v}
        for e, v in zip(EVAL_SEEDS, values, strict=True)
    ]


def _metrics() -> pd.DataFrame:
    rows = []
    flat = lambda x: [x] * 4  # noqa: E731
    for run, m1, m2 in (
        ("base_cfg", flat(0.2), [2.0, 2.1, 1.9, 2.0]),
        ("teacher_a", flat(0.7), [1.5, 1.7, 1.4, 1.6]),  # gains on m1, drops m2
        ("teacher_b", flat(0.2), flat(2.5)),  # a quarter of m2's headroom
    ):
        rows += _rows(run, 0, 8, "m1", m1) + _rows(run, 0, 8, "m2", m2)
        rows += _rows(run, 0, 8, "held", flat(1.0))
    rows += _rows("teacher_a", 0, 4, "m1", flat(0.0))  # an earlier checkpoint: ignored
    for seed, m1 in ((0, 0.65), (1, 0.60)):  # opd recovers 0.425 / 0.5 of teacher a's gain
        rows += _rows("opd", seed, 16, "m1", flat(m1)) + _rows("opd", seed, 16, "m2", flat(2.5))
    rows.append(
        {"run": "opd", "seed": 0, "step": 3, "metric": "loss", "eval_seed": None, "value": 9.0}
    )  # a training row (no eval seed) is never an evaluation
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def table():
    return property_checks(_metrics(), CFG, {"m1": 1.0, "m2": 4.0}).set_index("check")


def _get(table, prop, start):
    hits = table[(table["property"] == prop) & table.index.str.startswith(start)]
    assert len(hits) == 1, list(table.index)
    return hits.iloc[0]


def test_property_3_is_the_gain_as_a_fraction_of_the_headroom(table):
    a = _get(table, "3", "a teacher")
    assert a["value"] == pytest.approx((0.7 - 0.2) / (1.0 - 0.2), abs=1e-4) and a["passed"]
    b = _get(table, "3", "b teacher")  # own column m2 only ('held' is not in b's reward)
    assert b["value"] == pytest.approx(0.25, abs=1e-4) and not b["passed"]


def test_property_4_is_the_largest_paired_drop_in_standard_errors(table):
    d = np.array([1.5, 1.7, 1.4, 1.6]) - np.array([2.0, 2.1, 1.9, 2.0])
    z = -d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    row = _get(table, "4", "largest drop")
    assert row["value"] == pytest.approx(z, rel=1e-3) and row["passed"]
    assert "a teacher on m2" in row.name


def test_recovery_is_the_students_gain_over_the_teachers(table):
    a = _get(table, "recovery", "opd recovers 90% of the a teacher")
    assert a["value"] == pytest.approx((0.625 - 0.2) / (0.7 - 0.2), abs=1e-4)
    assert not a["passed"]  # 0.85 < 0.9
    b = _get(table, "recovery", "opd recovers 90% of the b teacher")
    assert b["value"] == pytest.approx(1.0, abs=1e-4) and b["passed"]


def test_a_teacher_that_did_not_gain_fails_recovery_with_the_reason():
    metrics = _metrics()
    metrics.loc[(metrics["run"] == "teacher_b") & (metrics["metric"] == "m2"), "value"] = 1.0
    t = property_checks(metrics, CFG, {"m1": 1.0, "m2": 4.0})
    row = t[(t["property"] == "recovery") & t["check"].str.contains("b teacher")].iloc[0]
    assert np.isnan(row["value"]) and not row["passed"] and "did not gain" in row["check"]


def test_written_with_the_world_bounds_file(tmp_path):
    (tmp_path / "world_bounds.json").write_text('{"m1": {"floor": 0, "ceiling": 0.6}}')
    t = write_property_checks(_metrics(), CFG, tmp_path / "world_bounds.json", tmp_path)
    assert (tmp_path / "properties.csv").exists() and (tmp_path / "properties.md").exists()
    a = t[t["check"].str.startswith("a teacher")].iloc[0]  # the file's ceiling wins: 0.5/0.4
    assert a["value"] == pytest.approx(1.25, abs=1e-4)
