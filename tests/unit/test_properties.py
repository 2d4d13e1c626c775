"""docs/mini_world.md's properties 3 and 4 and the recovery bar on hand-made evaluations (known
answers).

Every expected number below is worked out by hand in the comments: fractions of headroom against
the base with CFG, SEs of paired differences over 4 evaluation seeds, students' mean and SE over
training seeds.
"""

import math

import pandas as pd
import pytest

from opd.analysis.properties import (
    ceilings,
    column_weights,
    property_checks,
    recovery_curves,
    write_property_checks,
)

EVAL_SEEDS = [10, 11, 12, 13]
CFG = {
    "tasks": {
        "a": {"reward": {"s1": 1.0}},
        "b": {"reward": {"s2": 1.0}},
        "c": {"reward": {"p": 0.75, "q": 0.25}},  # an aesthetics-like mix of two scorers
    },
    "benchmarks": {
        "m1": {"scorer": "s1", "task": "a"},
        "m2": {"scorer": "s2", "task": "b", "bounds": [0.0, 4.0]},
        "held": {"scorer": "h", "task": "b"},  # not in b's reward: not b's own column
        "cp": {"scorer": "p", "task": "c"},
        "cq": {"scorer": "q", "task": "c"},
        "cx": {"scorer": "x", "task": "c"},  # not in c's reward: weight 0
    },
}
CEILING = {"m1": 1.0, "m2": 4.0, "cp": 1.0, "cq": 2.0, "cx": 5.0}

BASE = {"m1": [0.20, 0.22, 0.18, 0.20], "m2": [2.0, 2.1, 1.9, 2.0], "held": 1.0}
BASE |= {"cp": 0.2, "cq": 1.0, "cx": 3.0}
# teacher a: m1 paired gains 0.50, 0.52, 0.48, 0.50 (mean 0.5 of headroom 1 - 0.2 = 0.8)
TEACHER_A = BASE | {"m1": [0.70, 0.74, 0.66, 0.70]}
# teacher b: m2 gains 2.0, -0.5, 2.0, 0.5 (mean 1.0 of headroom 4 - 2 = 2: half, but noisy)
TEACHER_B = BASE | {"m2": [4.0, 1.6, 3.9, 2.5]}
# teacher c: cp gains 1.2 (1.5 of its 0.8 headroom, capped at 1), cq 0.3, 0.7, 0.5, 0.5 (of 1)
TEACHER_C = BASE | {"cp": 1.4, "cq": [1.3, 1.7, 1.5, 1.5], "cx": 0.0}


def _rows(run, seed, step, values, model_evals=0.0, eval_seeds=EVAL_SEEDS):
    """Evaluation rows of one checkpoint: ``values`` maps a column to one value or one per
    evaluation seed."""
    rows = []
    for col, v in values.items():
        per_seed = v if isinstance(v, list) else [v] * len(eval_seeds)
        for e, x in zip(eval_seeds, per_seed, strict=True):
            rows.append(
                {
                    "run": run,
                    "method": run,
                    "role": "other",
                    "seed": seed,
                    "stage": "",
                    "step": step,
                    "samples": 0,
                    "model_evals": model_evals,
                    "wall_seconds": 0.0,
                    "metric": col,
                    "eval_seed": e,
                    "value": float(x),
                }
            )
    return rows


def _metrics(students=(), teacher_b=TEACHER_B) -> pd.DataFrame:
    rows = _rows("base_cfg", 0, 0, BASE)
    rows += _rows("base_nocfg", 0, 0, BASE | {"m1": 0.10, "m2": [1.5, 1.6, 1.4, 1.5]})
    rows += _rows("teacher_a", 0, 4, BASE | {"m1": 0.0})  # an earlier checkpoint: ignored
    rows += _rows("teacher_a", 0, 8, TEACHER_A)
    rows += _rows("teacher_b", 0, 8, teacher_b)
    rows += _rows("teacher_c", 0, 8, TEACHER_C)
    for seed, values in students:
        rows += _rows("opd", seed, 16, BASE | values)
    rows.append(
        {"run": "opd", "seed": 0, "step": 3, "metric": "loss", "eval_seed": None, "value": 9.0}
    )  # a training row (no eval seed) is never an evaluation
    return pd.DataFrame(rows)


def _get(table, prop, task):
    hits = table[(table["property"] == prop) & (table["task"] == task)]
    assert len(hits) == 1, table
    return hits.iloc[0]


def _se(values):
    """Hand formula: sample sd / sqrt(n)."""
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) / math.sqrt(len(values))


def test_column_weights_follow_the_reward_mix():
    assert column_weights(CFG, "c") == {"cp": 0.75, "cq": 0.25}  # cx's scorer is not rewarded
    assert column_weights(CFG, "b") == {"m2": 1.0}
    no_reward = {**CFG, "tasks": {**CFG["tasks"], "b": {"reward": {"other": 1.0}}}}
    assert column_weights(no_reward, "b") == {"m2": 1.0, "held": 1.0}  # then all, equally


def test_ceilings_take_the_config_bound_first_then_the_best_of_16_file(tmp_path):
    path = tmp_path / "prompt_ceilings.json"
    path.write_text('{"m1": {"ceiling": 0.6, "validation_ceiling": 0.7}, "m2": {"ceiling": 3}}')
    assert ceilings(CFG, path) == {"m1": 0.6, "m2": 4.0}  # m2's bound [0, 4] beats the file
    assert ceilings(CFG, tmp_path / "missing.json") == {"m2": 4.0}


def test_property_3_is_the_fraction_of_headroom_with_a_paired_se():
    row = _get(property_checks(_metrics(), CFG, CEILING), "3", "a")
    # fraction 0.5 / 0.8; gains 0.50, 0.52, 0.48, 0.50: sd sqrt(0.0008 / 3), SE sd / 2, / 0.8
    se = math.sqrt(0.0008 / 3) / 2 / 0.8
    assert row["value"] == pytest.approx(0.625, abs=1e-4)
    assert row["se"] == pytest.approx(se, rel=1e-2) and row["passed"]


def test_property_3_needs_three_standard_errors_as_well_as_half_the_headroom():
    row = _get(property_checks(_metrics(), CFG, CEILING), "3", "b")
    # gains 2, -0.5, 2, 0.5: mean 1 (half of 2); deviations 1, -1.5, 1, -0.5: var 4.5 / 3
    se = math.sqrt(1.5) / 2
    assert row["value"] == pytest.approx(0.5, abs=1e-4)
    assert row["se"] == pytest.approx(se / 2, rel=1e-2)  # in units of the headroom 2
    assert not row["passed"]  # 1.0 / 0.612 = 1.6 SE < 3
    assert "1.6 SE over 4 evaluation seeds" in row["check"]


def test_the_fraction_is_capped_per_column_and_weighted_by_the_reward():
    row = _get(property_checks(_metrics(), CFG, CEILING), "3", "c")
    # cp: 1.2 / 0.8 = 1.5 -> 1; cq: 0.5 / 1; 0.75 * 1 + 0.25 * 0.5 (cx's collapse weighs 0)
    assert row["value"] == pytest.approx(0.875, abs=1e-4)
    # SE of the uncapped weighted fraction per seed: 1.125 + 0.25 * (0.3, 0.7, 0.5, 0.5)
    assert row["se"] == pytest.approx(_se([1.2, 1.3, 1.25, 1.25]), rel=1e-2)
    assert row["passed"]


def test_a_cfg_free_teacher_is_measured_against_the_cfg_base(monkeypatch):
    # teacher a evaluated CFG-free: 0.15 beats the CFG-free base's 0.10, not the CFG base's 0.2
    metrics = _metrics()
    final_a = (metrics["run"] == "teacher_a") & (metrics["step"] == 8)
    metrics.loc[final_a & (metrics["metric"] == "m1"), "value"] = 0.15
    # its m2 against each base: CFG-free 1.5, 1.6, 1.4, 1.5 (+0, +0.1, 0, +0.1: no drop);
    # with CFG 2.0, 2.1, 1.9, 2.0 (-0.5, -0.4, -0.5, -0.4: 15.6 SE)
    metrics.loc[final_a & (metrics["metric"] == "m2"), "value"] = [1.5, 1.7, 1.4, 1.6]
    with_cfg = property_checks(metrics, CFG, CEILING)  # every run at CFG: the drop counts
    drop = _get(with_cfg, "4", "")
    assert drop["value"] == pytest.approx(0.45 / _se([-0.5, -0.4, -0.5, -0.4]), rel=1e-3)

    monkeypatch.setattr(
        "opd.evaluation.eval_guidance_of", lambda cfg, run: 1.0 if run == "teacher_a" else 4.5
    )
    t = property_checks(metrics, CFG, CEILING)
    row = _get(t, "3", "a")
    assert row["value"] == pytest.approx((0.15 - 0.2) / (1.0 - 0.2), abs=1e-4)  # not 0.056
    assert not row["passed"] and "against the base with CFG" in row["check"]
    # property 4 keeps the like-for-like base: no drop left for teacher a on m2, and every
    # other (teacher, other task's column) pair equals its base: z = 0
    assert _get(t, "4", "")["value"] == pytest.approx(0.0, abs=1e-9)


def test_fewer_than_four_evaluation_seeds_give_no_se_and_fail():
    three = _metrics()
    three = three[three["eval_seed"] != 13]
    row = _get(property_checks(three, CFG, CEILING), "3", "a")
    assert row["value"] == pytest.approx(0.5 / 0.8, abs=1e-4)  # gains 0.50, 0.52, 0.48
    assert math.isnan(row["se"]) and not row["passed"] and "4 needed" in row["check"]
    conflict = _get(property_checks(three, CFG, CEILING), "4", "")  # no pair has an SE either
    assert math.isnan(conflict["value"]) and not conflict["passed"]
    assert "no SE: 3 evaluation seeds" in conflict["check"]


def test_recovery_is_the_students_fraction_over_the_teachers_per_training_seed():
    students = [(0, {"m1": 0.66}), (1, {"m1": 0.60}), (2, {"m1": 0.70})]
    row = _get(property_checks(_metrics(students), CFG, CEILING), "recovery", "a")
    # fractions 0.46, 0.40, 0.50 of 0.8 = 0.575, 0.5, 0.625; over the teacher's 0.625
    per_seed = [0.92, 0.80, 1.00]
    assert row["value"] == pytest.approx(sum(per_seed) / 3, abs=1e-4)
    assert row["se"] == pytest.approx(_se(per_seed), rel=1e-2)
    assert row["passed"]  # 0.907 >= 0.9, and the teacher gained
    assert "teacher 0.625 ± 0.01" in row["check"]  # the teacher's own SE beside it


def test_recovery_caps_and_weights_the_students_columns_too():
    students = [(0, {"cp": 1.0, "cq": 1.3}), (1, {"cp": 2.0, "cq": 1.1})]
    row = _get(property_checks(_metrics(students), CFG, CEILING), "recovery", "c")
    # seed 0: 0.75 * min(0.8 / 0.8, 1) + 0.25 * 0.3 = 0.825; seed 1: 0.75 * 1 + 0.25 * 0.1
    per_seed = [0.825 / 0.875, 0.775 / 0.875]
    assert row["value"] == pytest.approx(sum(per_seed) / 2, abs=1e-4)
    assert row["se"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2, rel=1e-2)


def test_a_teacher_that_did_not_gain_keeps_the_number_and_says_so():
    # teacher b's gains 1.0, -0.6, 0.6, -0.2: fraction 0.1 of 2, SE sqrt(1.6 / 3) / 2 / 2 = 0.18
    teacher_b = TEACHER_B | {"m2": [3.0, 1.5, 2.5, 1.8]}
    students = [(0, {"m2": 2.1}), (1, {"m2": 2.3})]  # fractions 0.05, 0.15
    t = property_checks(_metrics(students, teacher_b), CFG, CEILING)
    assert _get(t, "3", "b")["value"] == pytest.approx(0.1, abs=1e-4)
    row = _get(t, "recovery", "b")
    assert row["value"] == pytest.approx(1.0, abs=1e-4)  # 0.5 and 1.5 over the teacher's 0.1
    assert row["se"] == pytest.approx(0.5, rel=1e-2)
    assert not row["passed"] and "did not gain" in row["check"]


def test_written_with_the_ceilings_file_and_the_recovery_figure(tmp_path):
    (tmp_path / "prompt_ceilings.json").write_text('{"m1": {"ceiling": 0.6}}')
    students = [(0, {"m1": 0.66}), (1, {"m1": 0.60})]
    from opd.analysis.plots import write_recovery_figure

    metrics = _metrics(students)
    t = write_property_checks(metrics, CFG, tmp_path / "prompt_ceilings.json", tmp_path)
    write_recovery_figure(metrics, CFG, tmp_path / "prompt_ceilings.json", tmp_path / "fig")
    assert (tmp_path / "properties.csv").exists() and (tmp_path / "properties.md").exists()
    a = t[(t["property"] == "3") & (t["task"] == "a")].iloc[0]  # the file's ceiling: 0.5 / 0.4
    assert a["value"] == pytest.approx(1.0, abs=1e-4)  # capped at 1 (uncapped 1.25)
    for ext in ("png", "pdf", "rst", "caption.txt"):
        assert (tmp_path / "fig" / f"recovery.{ext}").stat().st_size > 0


def _curve_metrics() -> pd.DataFrame:
    """Two teachers (1,000 and 500 model evaluations), OPD at 0/200/400 own evaluations over two
    seeds, a baseline at 0/3,000."""
    rows = _rows("base_cfg", 0, 0, BASE)
    rows += _rows("teacher_a", 0, 8, TEACHER_A, model_evals=1000.0)
    rows += _rows("teacher_b", 0, 8, TEACHER_B, model_evals=500.0)
    for seed, (mid, end) in enumerate(((0.45, 0.65), (0.55, 0.70))):
        rows += _rows("opd", seed, 0, BASE)
        rows += _rows("opd", seed, 4, BASE | {"m1": mid}, model_evals=200.0)
        rows += _rows("opd", seed, 8, BASE | {"m1": end}, model_evals=400.0)
        rows += _rows("multitask_nft", seed, 10, BASE | {"m1": 0.40}, model_evals=3000.0)
    return pd.DataFrame(rows)


def test_recovery_curves_put_every_checkpoint_at_its_compute():
    cfg = {**CFG, "tasks": {k: CFG["tasks"][k] for k in ("a", "b")}}
    curves = recovery_curves(_curve_metrics(), cfg, CEILING)
    assert curves.teacher_evals == 1500.0
    assert curves.teachers["a"].fraction == pytest.approx(0.625)
    a = curves.points[curves.points["task"] == "a"].set_index(["run", "seed", "step"])
    # OPD's compute includes both teachers': 200 + 1,500; its fraction (0.45 - 0.2) / 0.8
    assert a.loc[("opd", 0, 4), "compute"] == 1700.0
    assert a.loc[("opd", 0, 4), "fraction"] == pytest.approx(0.3125)
    assert a.loc[("opd", 1, 8), "fraction"] == pytest.approx(0.625)
    assert a.loc[("multitask_nft", 1, 10), "compute"] == 3000.0  # a baseline's own compute
    assert a.loc[("multitask_nft", 1, 10), "fraction"] == pytest.approx(0.25)


def test_recovery_figure_and_caption_from_a_small_table(tmp_path):
    from opd.analysis.plots import recovery_caption, recovery_figure, save_figure

    cfg = {**CFG, "tasks": {k: CFG["tasks"][k] for k in ("a", "b")}}
    curves = recovery_curves(_curve_metrics(), cfg, CEILING)
    paths = save_figure(recovery_figure(curves), tmp_path / "recovery")
    assert all(p.stat().st_size > 0 for p in paths)
    cap = recovery_caption(curves)
    # step 8's mean fraction (0.5625 + 0.625) / 2 = 0.594 first reaches 0.9 x 0.625 = 0.5625
    assert "reaches 90% at 400 own evaluations (1,900 in all)" in cap
    assert "opd final 0.594" in cap and "recovery 0.95" in cap
    assert "multitask_nft final 0.25" in cap


def test_precision_row_takes_the_largest_final_se_of_the_composition_column():
    cfg = {
        "tasks": {"composition": {"reward": {"compose": 1.0}}},
        "benchmarks": {
            "compose": {"scorer": "compose", "task": "composition", "bounds": [0.0, 1.0]},
            "other": {"scorer": "o", "task": "composition"},  # unbounded: no precision row
        },
    }

    def rows(run, seed, step, ses):
        out = _rows(run, seed, step, {"compose": 0.5, "other": 0.5})
        for r in out:
            r["n"], r["se"] = 576, (ses.pop(0) if r["metric"] == "compose" else 0.9)
        return out

    # base 0.010-0.013 (mean 0.0115); a run's step 4 is no final checkpoint (0.05 left out);
    # its final step 8 averages to 0.019; another seed 0.021 (mean of 0.02 and 0.022, x2)
    table = pd.DataFrame(
        rows("base_cfg", 0, 0, [0.010, 0.011, 0.012, 0.013])
        + rows("opd", 0, 4, [0.05] * 4)
        + rows("opd", 0, 8, [0.018, 0.020, 0.019, 0.019])
        + rows("opd", 1, 8, [0.020, 0.022, 0.020, 0.022])
    )
    got = _get(property_checks(table, cfg, {}), "eval", "composition")
    assert got["value"] == pytest.approx(0.021) and not got["passed"]
    assert "opd seed 1" in got["check"] and "576 images" in got["check"]
    passing = table[~((table["run"] == "opd") & (table["seed"] == 1))]
    got = _get(property_checks(passing, cfg, {}), "eval", "composition")
    assert got["value"] == pytest.approx(0.019) and got["passed"]
    # tables without the column (older evaluations) have no precision row
    none = property_checks(table.drop(columns=["se"]), cfg, {})
    assert (none["property"] != "eval").all()
