"""Unit tests of opd.analysis.retention on a hand-built metrics table: curves averaged over
evaluation seeds, best / final / drop, cascade stage-end values and the loss after a task's own
stage, gaps to the teachers, and the figure, table and caption files of ``opd retention``."""

from __future__ import annotations

import pandas as pd
import pytest

from opd.analysis import retention as R

CFG = {
    "benchmarks": {
        "compose": {"scorer": "compose", "task": "composition"},
        "text": {"scorer": "text", "task": "text"},
        "pick": {"scorer": "pick", "task": "aesthetics"},
    },
    "tasks": {"composition": {}, "text": {}, "aesthetics": {}},
}


def _rows(run, role, seed, points, metric, stage="train", method=None):
    """Eval rows of one curve: ``points`` = [(step, value)], two eval seeds at value +- 0.01."""
    out = []
    for step, value in points:
        st = stage(step) if callable(stage) else stage
        for eval_seed, off in ((1000, 0.01), (1001, -0.01)):
            out.append(
                {
                    "profile": "test",
                    "run": run,
                    "method": method or run,
                    "role": role,
                    "seed": seed,
                    "stage": st,
                    "step": step,
                    "model_evals": 100 * step,
                    "wall_seconds": float(step),
                    "task": "",
                    "metric": metric,
                    "eval_seed": eval_seed,
                    "value": value + off,
                }
            )
    return out


def _metrics() -> pd.DataFrame:
    rows = []
    rows += _rows("base_cfg", "base", 0, [(0, 0.5)], "compose", stage="base", method="base")
    rows += _rows("teacher_composition", "teacher", 0, [(0, 0.5), (10, 0.9)], "compose")
    rows += _rows("teacher_text", "teacher", 0, [(0, 0.3), (10, 0.8)], "text")
    rows += _rows("opd", "table1", 0, [(0, 0.5), (5, 0.8), (10, 0.7)], "compose")
    rows += _rows("opd", "table1", 1, [(0, 0.5), (5, 0.85), (10, 0.85)], "compose")
    rows += _rows("opd", "table1", 0, [(0, 0.3), (5, 0.5), (10, 0.6)], "text")
    rows += _rows("opd", "table1", 1, [(0, 0.3), (5, 0.5), (10, 0.7)], "text")

    def stage(step):
        return "0:text" if step <= 2 else "1:composition"

    cascade = [(0, 0.3), (1, 0.5), (2, 0.6), (3, 0.5), (4, 0.4)]
    rows += _rows("cascade_nft", "table1", 0, cascade, "text", stage=stage, method="nft")
    compose = [(0, 0.5), (1, 0.5), (2, 0.5), (3, 0.6), (4, 0.8)]
    rows += _rows("cascade_nft", "table1", 0, compose, "compose", stage=stage, method="nft")
    df = pd.DataFrame(rows)
    # a training-log row (no eval seed) and an unknown column: both ignored
    extra = {**rows[0], "metric": "train/loss", "eval_seed": pd.NA, "value": 9.0}
    other = {**rows[0], "metric": "not_a_column", "value": 9.0}
    return pd.concat([df, pd.DataFrame([extra, other])], ignore_index=True)


def _value(table, run, metric, statistic, stage=""):
    sel = table[
        (table["run"] == run)
        & (table["metric"] == metric)
        & (table["statistic"] == statistic)
        & (table["stage"] == stage)
    ]
    assert len(sel) == 1, (run, metric, statistic, stage, sel)
    return sel.iloc[0]


def test_curves_average_eval_seeds() -> None:
    curves = R.retention_curves(_metrics(), CFG)
    assert list(curves.columns) == list(R.CURVE_COLUMNS)
    opd = curves[(curves["run"] == "opd") & (curves["seed"] == 0) & (curves["metric"] == "compose")]
    assert opd["value"].tolist() == pytest.approx([0.5, 0.8, 0.7])
    assert opd["model_evals"].tolist() == [0, 500, 1000]
    assert set(curves["metric"]) == {"compose", "text"}
    assert (curves[curves["metric"] == "compose"]["task"] == "composition").all()


def test_best_final_drop_and_teacher_gap() -> None:
    table = R.retention_table(_metrics(), CFG)
    assert list(table.columns) == list(R.TABLE_COLUMNS)
    best = _value(table, "opd", "compose", "best")
    assert best["value"] == pytest.approx((0.8 + 0.85) / 2) and best["n_seeds"] == 2
    assert _value(table, "opd", "compose", "final")["value"] == pytest.approx((0.7 + 0.85) / 2)
    drop = _value(table, "opd", "compose", "drop")
    assert drop["value"] == pytest.approx(0.05)
    assert drop["std"] == pytest.approx(pd.Series([0.1, 0.0]).std())
    assert _value(table, "opd", "text", "drop")["value"] == pytest.approx(0.0)
    # gap to the task's teacher (final 0.9 for compose, 0.8 for text)
    assert _value(table, "opd", "compose", "gap_to_teacher")["value"] == pytest.approx(-0.125)
    assert _value(table, "opd", "text", "gap_to_teacher")["value"] == pytest.approx(-0.15)
    assert _value(table, "teacher_composition", "compose", "final")["value"] == pytest.approx(0.9)
    teach = table[table["run"].str.startswith("teacher_")]
    assert "gap_to_teacher" not in set(teach["statistic"])
    assert "base_cfg" not in set(table["run"])
    assert R.teacher_finals(_metrics(), CFG) == {
        ("composition", "compose"): pytest.approx(0.9),
        ("text", "text"): pytest.approx(0.8),
    }


def test_cascade_stage_ends() -> None:
    table = R.retention_table(_metrics(), CFG)
    assert _value(table, "cascade_nft", "text", "stage_end", "0:text")["value"] == pytest.approx(
        0.6
    )
    assert _value(table, "cascade_nft", "text", "stage_end", "1:composition")["value"] == (
        pytest.approx(0.4)
    )
    lost = _value(table, "cascade_nft", "text", "drop_after_own_stage", "0:text")
    assert lost["value"] == pytest.approx(0.2)
    kept = _value(table, "cascade_nft", "compose", "drop_after_own_stage", "1:composition")
    assert kept["value"] == pytest.approx(0.0)
    assert _value(table, "cascade_nft", "text", "drop")["value"] == pytest.approx(0.2)
    assert "stage_end" not in set(table[table["run"] == "opd"]["statistic"])
    curves = R.retention_curves(_metrics(), CFG)
    assert R.stage_boundaries(curves) == {"cascade_nft": [200.0]}
    assert R.parse_stage("1:composition") == (1, "composition") and R.parse_stage("train") is None
    assert R.main_columns(CFG) == ["compose", "text", "pick"]


def test_retention_files_and_caption(tmp_path) -> None:
    from opd.commands.retention import read_metrics, write_retention

    path = tmp_path / "metrics.csv"
    _metrics().to_csv(path, index=False)
    files = write_retention(read_metrics(path), CFG, tmp_path)
    for rel in (
        "tables/retention.csv",
        "figures/retention.png",
        "figures/retention.pdf",
        "figures/retention.caption.txt",
    ):
        assert (tmp_path / rel).stat().st_size > 0
        assert tmp_path / rel in files
    caption = (tmp_path / "figures/retention.caption.txt").read_text()
    assert "cascade_nft loses 0.2 on text after its last text stage (0:text)" in caption
    assert "opd final minus teacher final: compose -0.125, text -0.15" in caption
    table = pd.read_csv(tmp_path / "tables/retention.csv", keep_default_na=False)
    assert set(table["statistic"]) >= {"best", "final", "drop", "stage_end", "gap_to_teacher"}


def test_empty_metrics(tmp_path) -> None:
    from opd.commands.retention import write_retention

    empty = pd.DataFrame(columns=["run", "role", "seed", "stage", "step", "metric", "value"])
    assert R.retention_table(empty, CFG).empty
    write_retention(empty, CFG, tmp_path)
    assert "No evaluations" in (tmp_path / "figures/retention.caption.txt").read_text()
