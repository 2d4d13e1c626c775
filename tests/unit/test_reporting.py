"""The reporting library on a small hand-built metrics table: Table 1's numbers against hand
computations, the written formats, the tidy table from eval CSVs, and figures rendered to files."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from opd.reporting import FIGURES, METRIC_COLUMNS
from opd.reporting.collect import collect, read_metrics, write_metrics
from opd.reporting.tables import (
    WORLD_SOURCE,
    RunInfo,
    bounds_lines,
    fairness_lines,
    make_tables,
    notes,
    with_world_bounds,
    write_tables,
)

CFG = {
    "profile": "unit",
    "world": {"version": "w-test"},
    "tasks": {
        "a": {"reward": {"s1": 1.0}, "teacher": {"method": "grpo_guard"}},
        "b": {"reward": {"s2": 1.0}, "teacher": {"method": "nft"}},
    },
    "benchmarks": {
        "m1": {"scorer": "s1", "task": "a", "bounds": [0.0, 1.0]},
        "m2": {"scorer": "s2", "task": "b"},
    },
    "methods": {
        "opd": {},
        "multi": {"method": "multitask_nft"},
        "sft": {"method": "sft_distill"},
        "opd_sde": {"method": "opd", "noise_level": 0.7},
    },
    "table1": ["opd", "multi"],
    "ablations": ["sft", "opd_sde"],
    "seeds": [0, 1],
    "ablation_seeds": [0],
}
INFO = {
    "opd": RunInfo("opd", needs_teachers=True, noise_level=0.0),
    "multi": RunInfo("multitask_nft"),
    "sft": RunInfo("sft_distill", needs_teachers=True),
    "opd_sde": RunInfo("opd", needs_teachers=True, noise_level=0.7),
}
EVAL_SEEDS = (10, 11)


def _rows(run, role, seed, step, evals, wall, m1, m2, method=None):
    """Rows of one checkpoint; m1/m2 are per-eval-seed value pairs."""
    out = []
    for metric, values, task in (("m1", m1, "a"), ("m2", m2, "b")):
        for eval_seed, v in zip(EVAL_SEEDS, values, strict=True):
            out.append(
                {
                    "profile": "unit",
                    "world_version": "w-test",
                    "run": run,
                    "method": method or run,
                    "role": role,
                    "seed": seed,
                    "stage": "",
                    "step": step,
                    "samples": 10 * step,
                    "forward_evals": evals,
                    "backward_evals": 0,
                    "model_evals": evals,
                    "wall_seconds": wall,
                    "task": task,
                    "metric": metric,
                    "eval_seed": eval_seed,
                    "value": v,
                }
            )
    return out


def synthetic_metrics() -> pd.DataFrame:
    rows = []
    rows += _rows("base_nocfg", "base", 0, 0, 0, 0, (0.1, 0.1), (2.0, 2.0), "base")
    rows += _rows("base_cfg", "base", 0, 0, 0, 0, (0.3, 0.3), (3.0, 3.0), "base")
    # teachers: final step 2 (model evals 100 / 300, wall 1 h / 2 h)
    rows += _rows("teacher_a", "teacher", 0, 1, 50, 1800, (0.5, 0.5), (2.5, 2.5), "grpo_guard")
    rows += _rows("teacher_a", "teacher", 0, 2, 100, 3600, (0.9, 0.9), (3.5, 3.5), "grpo_guard")
    rows += _rows("teacher_b", "teacher", 0, 2, 300, 7200, (0.2, 0.2), (5.0, 5.0), "nft")
    # opd: an early checkpoint that must be ignored, then the final one
    rows += _rows("opd", "table1", 0, 1, 25, 900, (0.0, 0.0), (2.0, 2.0))
    rows += _rows("opd", "table1", 0, 2, 50, 1800, (0.6, 0.8), (4.0, 4.0))
    rows += _rows("opd", "table1", 1, 1, 25, 900, (0.0, 0.0), (2.0, 2.0))
    rows += _rows("opd", "table1", 1, 2, 50, 1800, (0.5, 0.7), (4.5, 4.5))
    for seed in (0, 1):
        rows += _rows(
            "multi", "table1", seed, 1, 250, 18000, (0.2, 0.2), (2.5, 2.5), "multitask_nft"
        )
        rows += _rows(
            "multi", "table1", seed, 2, 500, 36000, (0.4, 0.4), (3.0, 3.0), "multitask_nft"
        )
    rows += _rows("sft", "ablation", 0, 1, 20, 600, (0.2, 0.2), (2.0, 2.0), "sft_distill")
    rows += _rows("sft", "ablation", 0, 2, 40, 1200, (0.4, 0.4), (2.0, 2.0), "sft_distill")
    rows += _rows("opd_sde", "ablation", 0, 1, 20, 600, (0.3, 0.3), (3.0, 3.0), "opd")
    rows += _rows("opd_sde", "ablation", 0, 2, 40, 1200, (0.5, 0.5), (3.5, 3.5), "opd")
    df = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    df["eval_seed"] = df["eval_seed"].astype("Int64")
    return df


@pytest.fixture(scope="module")
def tables():
    return make_tables(synthetic_metrics(), CFG, INFO)


def _row(table, run):
    data = table.data.set_index("run")
    return data.loc[run]


def test_table1_rows_are_base_teachers_then_table1_runs(tables):
    assert list(tables["table1"].data["run"]) == [
        "base_nocfg",
        "base_cfg",
        "teacher_a",
        "teacher_b",
        "opd",
        "multi",
    ]
    assert list(tables["table1"].data["row"][:3]) == ["base w/o CFG", "base + CFG", "a teacher"]


def test_final_checkpoint_mean_over_eval_seeds_then_mean_std_over_training_seeds(tables):
    opd = _row(tables["table1"], "opd")
    # per seed: mean over eval seeds of the final step -> 0.7 and 0.6
    assert opd["m1_mean"] == pytest.approx(0.65)
    assert opd["m1_std"] == pytest.approx(math.sqrt(2 * 0.05**2))
    assert opd["m2_mean"] == pytest.approx(4.25)
    assert opd["n_seeds"] == 2
    assert math.isnan(_row(tables["table1"], "teacher_a")["m1_std"])  # one seed: no std


def test_average_uses_config_bounds_and_base_floor_best_row_ceiling(tables):
    bounds = tables["table1"].bounds
    assert (bounds["m1"].lo, bounds["m1"].hi, bounds["m1"].source) == (0.0, 1.0, "config")
    # m2 has no bounds: floor = base w/o CFG (2.0), ceiling = best row (teacher_b, 5.0)
    assert (bounds["m2"].lo, bounds["m2"].hi) == (2.0, 5.0)
    assert "teacher_b" in bounds["m2"].source
    opd = _row(tables["table1"], "opd")
    seed0 = (0.7 + (4.0 - 2.0) / 3.0) / 2
    seed1 = (0.6 + (4.5 - 2.0) / 3.0) / 2
    assert opd["average_mean"] == pytest.approx((seed0 + seed1) / 2)
    assert opd["average_std"] == pytest.approx(abs(seed0 - seed1) / math.sqrt(2))
    assert _row(tables["table1"], "base_nocfg")["average_mean"] == pytest.approx(0.1 / 2)


def test_compute_parallel_adds_longest_teacher_total_adds_all(tables):
    opd = _row(tables["table1"], "opd")
    assert opd["evals_parallel"] == pytest.approx(50 + 300)
    assert opd["evals_total"] == pytest.approx(50 + 100 + 300)
    assert opd["hours_parallel"] == pytest.approx(0.5 + 2.0)
    assert opd["hours_total"] == pytest.approx(0.5 + 1.0 + 2.0)
    multi = _row(tables["table1"], "multi")  # no teachers: its own compute in both
    assert multi["evals_parallel"] == multi["evals_total"] == pytest.approx(500)
    assert multi["hours_parallel"] == multi["hours_total"] == pytest.approx(10.0)
    teacher = _row(tables["table1"], "teacher_b")
    assert teacher["evals_total"] == pytest.approx(300)
    assert math.isnan(_row(tables["table1"], "base_cfg")["evals_total"])


def test_fairness_compares_runs_without_teachers_to_teachers_plus_opd(tables):
    lines = fairness_lines(tables["table1"])  # opd 50 + teachers 100 + 300 = 450; multi 500
    assert "450" in lines[0]
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["- multi"]
    assert "1.11x" in lines[1] and "BELOW" not in lines[1]
    assert lines[0] in notes(tables["table1"])  # written under every Table 1
    starved = synthetic_metrics()
    starved.loc[starved["run"] == "multi", "model_evals"] *= 0.8  # 400 < 450
    low = fairness_lines(make_tables(starved, CFG, INFO)["table1"])
    assert "0.89x" in low[1] and "BELOW" in low[1]
    assert fairness_lines(tables["ablations"]) == []  # only teacher-distilling rows there


def test_a_downloaded_teacher_counts_its_reported_hours_and_no_evaluations(tmp_path):
    cfg = copy.deepcopy(CFG)
    cfg["tasks"]["b"]["teacher"]["pretrained"] = {"released": "tb"}
    reported = {"source": "P", "protocol": {}, "values": {}, "train_hours": 2.5}
    cfg["released"] = {"adapters": [{"name": "tb", "reported": reported}]}
    tables = make_tables(synthetic_metrics(), cfg, INFO)
    table = tables["table1"]
    teacher = _row(table, "teacher_b")  # its measured compute (300 evals, 2 h) is not ours
    assert math.isnan(teacher["evals_total"]) and teacher["hours_total"] == pytest.approx(2.5)
    opd = _row(table, "opd")  # 50 evals, 0.5 h; trained teacher_a 100 evals, 1 h
    assert opd["evals_parallel"] == opd["evals_total"] == pytest.approx(50 + 100)
    assert opd["hours_parallel"] == pytest.approx(0.5 + 2.5)
    assert opd["hours_total"] == pytest.approx(0.5 + 1.0 + 2.5)
    assert _row(table, "multi")["teachers"] == "" and opd["teachers"] == "downloaded"
    write_tables(tables, cfg, tmp_path)
    md = (tmp_path / "table1.md").read_text()
    assert "| downloaded " in md and "2.5 (reported)" in md and "150 + downloaded" in md
    assert "Teachers downloaded, not trained here (b teacher)" in md
    (fair,) = fairness_lines(table)  # unknown teacher evaluations: not checked, and said so
    assert "not checked" in fair and "downloaded" in fair
    cfg["released"]["adapters"][0]["reported"] = None  # hours nobody reported stay unknown
    opd = _row(make_tables(synthetic_metrics(), cfg, INFO)["table1"], "opd")
    assert math.isnan(opd["hours_total"]) and opd["evals_total"] == pytest.approx(150)


def test_world_bounds_replace_the_data_driven_ones_but_not_the_configs(tmp_path):
    path = tmp_path / "world_bounds.json"
    path.write_text('{"m1": {"floor": -1, "ceiling": 3}, "m2": {"floor": 1.0, "ceiling": 6.0}}')
    cfg = with_world_bounds(CFG, path)
    assert "world_bounds" not in CFG["benchmarks"]["m2"]  # the given config is left alone
    table = make_tables(synthetic_metrics(), cfg, INFO)["table1"]
    m1, m2 = table.bounds["m1"], table.bounds["m2"]
    assert (m1.lo, m1.hi, m1.source) == (0.0, 1.0, "config")  # config bounds win
    assert (m2.lo, m2.hi, m2.source) == (1.0, 6.0, WORLD_SOURCE)
    opd = _row(table, "opd")  # seeds' m2 values 4.0 and 4.5 -> (3/5 + 3.5/5) / 2 with m1
    m1_norm = np.mean([np.mean([0.6, 0.8]), np.mean([0.5, 0.7])])
    assert opd["average_mean"] == pytest.approx((m1_norm + (4.25 - 1.0) / 5.0) / 2)
    assert with_world_bounds(CFG, tmp_path / "missing.json") == CFG


def test_ablation_table_has_reference_and_uses_table1_bounds(tables):
    abl = tables["ablations"]
    assert list(abl.data["run"]) == ["opd", "sft", "opd_sde"]
    sft = _row(abl, "sft")
    assert sft["average_mean"] == pytest.approx((0.4 + 0.0) / 2)
    assert sft["evals_total"] == pytest.approx(40 + 400)


def test_written_formats(tables, tmp_path):
    paths = write_tables(tables, CFG, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [
            "table1.md",
            "table1.tex",
            "table1.csv",
            "table1.rst",
            "ablations.md",
            "ablations.csv",
            "ablations.rst",
        ]
    )
    md = (tmp_path / "table1.md").read_text()
    assert "0.650 ± 0.071" in md  # opd's m1
    assert "m2: [2, 5] (floor: base w/o CFG; ceiling: best row (teacher_b))" in md
    assert "paper" not in md.lower()  # the paper's numbers only in the paper profile
    tex = (tmp_path / "table1.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex
    csv = pd.read_csv(tmp_path / "table1.csv")
    assert {"m1_mean", "m1_std", "average_mean", "evals_parallel", "hours_total"} <= set(csv)
    caption = (tmp_path / "table1.rst").read_text()
    assert "Highest Average: ``opd`` (0.700 ± 0.024)" in caption


def test_paper_profile_prints_the_published_table_beside(tables, tmp_path):
    write_tables(tables, {**CFG, "profile": "paper"}, tmp_path)
    md = (tmp_path / "table1.md").read_text()
    assert "published Table 1" in md and "0.929" in md and "85.75+11.26" in md


def test_collect_builds_the_tidy_table(tmp_path):
    ev = tmp_path / "opd.csv"
    pd.DataFrame(
        [
            {
                "run": "opd",
                "method": "opd",
                "seed": 0,
                "stage": "",
                "step": 2,
                "samples": 4,
                "forward_evals": 8,
                "backward_evals": 4,
                "model_evals": 12,
                "wall_seconds": 1.5,
                "column": "m1",
                "task": "a",
                "eval_seed": 10,
                "value": 0.5,
                "n": 4,
                "se": se,
            }
            # an SE the evaluation could not estimate is written "nan" (csv.DictWriter)
            for se in ("0.02", "nan")
        ]
    ).to_csv(ev, index=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("step,stage,task,metric,value\n0,,a,loss,0.25\n")
    df = collect(CFG, [ev], [("opd", 0, run_dir), ("multi", 0, tmp_path / "absent")])
    assert tuple(df.columns) == METRIC_COLUMNS
    assert set(df["metric"]) == {"m1", "train/loss"}
    train = df[df["metric"] == "train/loss"].iloc[0]
    assert pd.isna(train["eval_seed"]) and train["role"] == "table1"
    assert (df["world_version"] == "w-test").all()
    out = write_metrics(df, tmp_path / "metrics.csv")
    back = read_metrics(out)
    assert len(back) == 3 and back["eval_seed"].dropna().tolist() == [10, 10]
    evals = back[back["metric"] == "m1"]
    assert evals["se"].iloc[0] == 0.02 and pd.isna(evals["se"].iloc[1])


def test_figures_render_to_files_with_generated_captions(tmp_path):
    from opd.reporting.figures import Samples, write_figures

    rng = np.random.default_rng(0)
    tasks = ["a", "a", "b", "b"]
    prompts = [f"prompt {i}" for i in range(4)]
    samples = {
        run: Samples(rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8), prompts, tasks)
        for run in ("base_cfg", "teacher_a", "opd")
    }
    paths = write_figures(synthetic_metrics(), CFG, INFO, samples, tmp_path)
    for name in FIGURES:
        for ext in ("png", "pdf", "rst"):
            path = Path(tmp_path / f"{name}.{ext}")
            assert path.exists() and path.stat().st_size > 0, path
    assert len(paths) == 3 * len(FIGURES)
    convergence = (tmp_path / "convergence.rst").read_text()
    assert "``opd``" in convergence and "400 model evaluations" in convergence
    assert "SDE a=0.7" in (tmp_path / "loss_noise.rst").read_text()


def test_a_metric_with_equal_floor_and_ceiling_is_left_out_of_the_average():
    metrics = synthetic_metrics()
    flat = metrics[metrics["metric"] == "m1"].assign(metric="m3", value=1.0)
    cfg = {**CFG, "benchmarks": {**CFG["benchmarks"], "m3": {"scorer": "s3", "task": "a"}}}
    tables = make_tables(pd.concat([metrics, flat], ignore_index=True), cfg, INFO)
    assert not tables["table1"].bounds["m3"].usable
    with_m3 = _row(tables["table1"], "opd")["average_mean"]
    without = _row(make_tables(metrics, CFG, INFO)["table1"], "opd")["average_mean"]
    assert with_m3 == pytest.approx(without)
    assert "degenerate, left out of the Average" in "\n".join(bounds_lines(tables["table1"]))


def test_count_tick_labels_stay_short() -> None:
    """Six-digit model-evaluation ticks ran into each other; they read as k and M now."""
    from opd.analysis.plots import _count

    labels = [_count(x) for x in (0, 950, 200_000, 759_808, 1_200_000, -50_000)]
    assert labels == ["0", "950", "200k", "759.8k", "1.2M", "-50k"]
