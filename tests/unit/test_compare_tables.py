"""benchmarks/compare_tables.py: differences in units of seed noise, against a hand computation,
and its exit status on the kept reference (identical tables pass, a shifted row fails)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from tests.benchmark_run import load_script

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "benchmarks" / "reference" / "mini"
compare_tables = load_script(REPO / "benchmarks/compare_tables.py")


def test_z_is_the_difference_over_the_standard_error_of_two_seed_means() -> None:
    ref = pd.read_csv(REFERENCE / "table1.csv")
    new = ref.copy()
    i = int(new.index[new["row"] == "opd"][0])
    new.loc[i, "text_mean"] += 0.05
    new.loc[i, "text_std"] = 0.02
    df = compare_tables.compare(ref, new).set_index(["row", "metric"])
    s_ref = float(ref.loc[i, "text_std"])
    expected = 0.05 / math.sqrt(s_ref**2 / 3 + 0.02**2 / 3)
    assert math.isclose(df.loc[("opd", "text"), "z"], expected, rel_tol=1e-9)
    assert (df.drop(index=("opd", "text"))["z"] == 0).all()
    # a one-seed row takes the metric's median multi-seed spread with n = 1
    j = int(new.index[new["row"] == "text teacher"][0])
    new.loc[j, "compose_mean"] += 0.01
    stds = pd.concat([ref["compose_std"], new["compose_std"]]).dropna()
    typical = float(stds[stds > 0].median())
    z = (
        compare_tables.compare(ref, new)
        .set_index(["row", "metric"])
        .loc[("text teacher", "compose"), "z"]
    )
    assert math.isclose(z, 0.01 / math.sqrt(2 * typical**2), rel_tol=1e-9)


def test_exit_status(tmp_path: Path) -> None:
    out = tmp_path / "cmp.json"
    assert compare_tables.main(["--new", str(REFERENCE), "--out", str(out)]) == 0
    shifted = pd.read_csv(REFERENCE / "table1.csv")
    shifted.loc[shifted["row"] == "opd", "compose_mean"] += 1.0
    (tmp_path / "new").mkdir()
    shifted.to_csv(tmp_path / "new" / "table1.csv", index=False)
    assert compare_tables.main(["--new", str(tmp_path / "new"), "--out", str(out)]) == 1
    assert '"worst": "opd / compose"' in out.read_text()


def test_tables_of_another_world_are_refused(tmp_path: Path) -> None:
    new = tmp_path / "new"
    new.mkdir()
    (new / "table1.csv").write_text((REFERENCE / "table1.csv").read_text())
    val = pd.read_csv(REFERENCE / "world_validation.csv")
    val.to_csv(new / "world_validation.csv", index=False)
    out = tmp_path / "cmp.json"
    assert compare_tables.main(["--new", str(new), "--out", str(out)]) == 0
    val.assign(world_version="mini-0").to_csv(new / "world_validation.csv", index=False)
    assert compare_tables.main(["--new", str(new), "--out", str(out)]) == 2


def test_default_output_leaves_the_kept_record_alone(tmp_path: Path, monkeypatch) -> None:
    record = REPO / "benchmarks/results/mini_vs_reference.json"
    before = record.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert compare_tables.main(["--reference", str(REFERENCE), "--new", str(REFERENCE)]) == 0
    written = tmp_path / "results/mini/compare_to_reference.json"
    assert '"max_abs_z": 0.0' in written.read_text()
    assert record.read_bytes() == before


def _copy_reference(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("table1.csv", "properties.csv", "world_validation.csv"):
        (dest / name).write_text((REFERENCE / name).read_text())
    return dest


def _shift(tables: Path, rows: list[str], sigmas: float) -> None:
    """Move compose of ``rows`` by ``sigmas`` times that row's own noise against the reference."""
    t = pd.read_csv(tables / "table1.csv")
    df = compare_tables.compare(pd.read_csv(REFERENCE / "table1.csv"), t).set_index(
        ["row", "metric"]
    )
    for row in rows:
        t.loc[t["row"] == row, "compose_mean"] += sigmas * df.loc[(row, "compose"), "noise"]
    t.to_csv(tables / "table1.csv", index=False)


def _flip(tables: Path, prop: str, task: str) -> None:
    p = pd.read_csv(tables / "properties.csv")
    hit = (p["property"].astype(str) == prop) & (p["task"].fillna("") == task)
    assert hit.sum() == 1
    p.loc[hit, "passed"] = ~p.loc[hit, "passed"].astype(bool)
    p.to_csv(tables / "properties.csv", index=False)


def test_a_new_run_is_judged_against_the_control_run(tmp_path: Path) -> None:
    rows = pd.read_csv(REFERENCE / "table1.csv")["row"].tolist()
    control, new = _copy_reference(tmp_path / "control"), _copy_reference(tmp_path / "new")
    out = tmp_path / "cmp.json"

    def run() -> tuple[int, dict]:
        args = ["--new", str(new), "--control", str(control), "--out", str(out)]
        code = compare_tables.main(args)
        return code, __import__("json").loads(out.read_text())

    _shift(control, rows[:3], 2.5)  # chaos alone moves three entries beyond 2
    _shift(new, rows[:4], 2.5)  # four is within the binomial margin of three
    code, summary = run()
    assert code == 0 and summary["control"]["beyond_2"] == 3
    assert summary["control"]["new_beyond_2"] == 4 and summary["control"]["share_holds"]
    _shift(new, rows[4:], 2.5)  # every row's compose (11 of 99) against three is not
    code, summary = run()
    assert code == 1 and not summary["control"]["share_holds"]
    assert (len(rows), summary["pairs"], summary["control"]["new_beyond_2"]) == (11, 99, 11)
    z = (11 - 3) / 99 / math.sqrt((14 / 198) * (1 - 14 / 198) * 2 / 99)
    assert math.isclose(summary["control"]["z_share"], z, rel_tol=1e-12)

    new = _copy_reference(tmp_path / "new2")
    _shift(new, rows[:1], 4.5)  # one entry beyond 4 fails whatever the control shows
    code, summary = run()
    assert code == 1 and summary["control"]["new_beyond_4"] == 1
    assert summary["control"]["beyond_4"] == 0 and summary["control"]["share_holds"]
    new = _copy_reference(tmp_path / "new3")
    _flip(new, "recovery", "aesthetics")  # a verdict the control kept
    code, summary = run()
    assert code == 1 and summary["verdicts_changed"] == ["properties.csv: recovery / aesthetics"]
    _flip(control, "recovery", "aesthetics")  # the control's chaos flips it too
    code, summary = run()
    assert code == 0 and summary["control"]["unexplained_verdicts"] == []
