"""benchmarks/compare_tables.py: differences in units of seed noise, against a hand computation,
and its exit status on the kept reference (identical tables pass, a shifted row fails)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "benchmarks" / "reference" / "mini"
spec = importlib.util.spec_from_file_location(
    "compare_tables", REPO / "benchmarks/compare_tables.py"
)
compare_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_tables)


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
