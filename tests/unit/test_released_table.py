"""The table of released models: each value beside its authors', compared under the protocol
that ran (a difference in SEs only where the protocols match; "protocol differs", "protocol not
stated" and "not reported" otherwise), and the evaluation records it reads."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from opd.released import read_record, record_path
from opd.reporting.released import (
    DIFFERS,
    NOT_REPORTED,
    UNSTATED,
    compare_protocol,
    released_table,
    write_released,
)

OURS = {
    "prompts": {"a": {"set": "mini:a", "count": 4}},
    "images_per_prompt": 2,
    "steps": 3,
    "guidance": 4.5,
    "resolution": 16,
}


def test_protocol_comparison() -> None:
    same = copy.deepcopy(OURS)
    assert compare_protocol(OURS, same, "a") == "same"
    assert compare_protocol(OURS, {**same, "steps": 40}, "a") == "differs"
    assert compare_protocol(OURS, {**same, "steps": None}, "a") == "unstated"
    assert compare_protocol(OURS, {**same, "prompts": None}, "a") == "unstated"
    wrong_count = {**same, "prompts": {"a": {"set": "mini:a", "count": 553}}}
    assert compare_protocol(OURS, wrong_count, "a") == "differs"
    assert compare_protocol(OURS, {"guidance": 1.0}, "a") == "differs"  # one stated field
    assert compare_protocol(OURS, None, "a") == "unstated"


CFG = {
    "profile": "unit",
    "tasks": {"a": {}, "b": {}},
    "benchmarks": {"m1": {"scorer": "s1", "task": "a"}, "m2": {"scorer": "s2", "task": "b"}},
    "released": {
        "base": {
            "hub": "owner/base",
            "revision": "main",
            "reported": {"nocfg": {"source": "P", "protocol": {}, "values": {"m1": 0.1}}},
        },
        "adapters": [
            {
                "name": "match",
                "hub": "o/r",
                "subfolder": "S/lora",
                "revision": "main",
                "guidance": 4.5,
                "reported": {
                    "source": "paper A",
                    "protocol": {
                        "prompts": {"a": {"set": "mini:a", "count": 4}},
                        "images_per_prompt": 2,
                        "steps": 3,
                        "guidance": 4.5,
                        "resolution": 16,
                    },
                    "values": {"m1": 0.5},
                },
            },
            {
                "name": "other",
                "hub": "o/r2",
                "subfolder": None,
                "revision": "abc",
                "guidance": 1.0,
                "reported": {"source": "paper B", "protocol": {"steps": 40}, "values": {"m1": 0.9}},
            },
        ],
    },
}


def _eval_csv(path: Path, runs: dict[str, dict[str, list[float]]]) -> Path:
    rows = [
        {"run": run, "column": col, "eval_seed": 100 + k, "value": v}
        for run, cols in runs.items()
        for col, values in cols.items()
        for k, v in enumerate(values)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _record(guidance: dict[str, float]) -> dict:
    tasks = {t: {"set": f"mini:{t}", "count": 4, "images_per_prompt": 2} for t in ("a", "b")}
    return {
        "steps": 3,
        "resolution": 16,
        "seeds": [100, 101],
        "tasks": tasks,
        "guidance": guidance,
        "source": {"commit": "c0ffee"},
        "scorers": {"s1": "in-process"},
    }


def test_released_table_compares_only_matching_protocols(tmp_path: Path) -> None:
    evals = {
        "base": _eval_csv(
            tmp_path / "base.csv",
            {
                "base_nocfg": {"m1": [0.1, 0.3], "m2": [1.0, 1.0]},
                "base_cfg": {"m1": [0.2, 0.4], "m2": [2.0, 2.0]},
            },
        ),
        "match": _eval_csv(tmp_path / "m.csv", {"match": {"m1": [0.6, 0.7], "m2": [3.0, 4.0]}}),
        "other": _eval_csv(tmp_path / "o.csv", {"other": {"m1": [0.8, 0.8], "m2": [5.0, 6.0]}}),
    }
    records = {
        "base": _record({"base_nocfg": 1.0, "base_cfg": 4.5}),
        "match": _record({"match": 4.5}),
        "other": _record({"other": 1.0}),
    }
    table = released_table(CFG, evals, records)
    assert len(table) == 4 * 2  # one row per model and benchmark
    assert not table.duplicated(["model", "benchmark"]).any()
    cell = table.set_index(["model", "benchmark"])
    match = cell.loc[("match", "m1")]
    assert match["ours"] == pytest.approx(0.65) and match["n_seeds"] == 2
    assert match["se"] == pytest.approx(pd.Series([0.6, 0.7]).std() / math.sqrt(2))
    assert match["diff_se"] == pytest.approx((0.65 - 0.5) / match["se"])
    assert match["comparison"] == f"{match['diff_se']:+.1f} SE"
    assert match["reported_protocol"] == "mini:a x4, 2 img/prompt, 3 steps, CFG 4.5, 16 px"
    assert cell.loc[("match", "m2")]["comparison"] == NOT_REPORTED
    assert cell.loc[("other", "m1")]["comparison"] == DIFFERS
    assert math.isnan(cell.loc[("other", "m1")]["diff_se"])
    assert cell.loc[("other", "m1")]["guidance"] == 1.0
    assert cell.loc[("base_nocfg", "m1")]["comparison"] == UNSTATED
    assert cell.loc[("base_cfg", "m1")]["comparison"] == NOT_REPORTED
    assert cell.loc[("match", "m1")]["commit"] == "c0ffee"
    assert cell.loc[("match", "m1")]["scorer"] == "in-process"
    paths = write_released(table, CFG, tmp_path / "out")
    md = (tmp_path / "out" / "released.md").read_text()
    assert "o/r / S/lora at main (commit c0ffee)" in md and "Source: paper B" in md
    assert "0.650 ± 0.050" in md and DIFFERS in md and NOT_REPORTED in md
    assert pd.read_csv(paths[0]).shape == (8, len(table.columns))


def test_records_are_read_from_beside_the_eval_csv(tmp_path: Path) -> None:
    csv = tmp_path / "eval.csv"
    with pytest.raises(FileNotFoundError, match=r"eval\.json"):
        read_record(csv)
    record_path(csv).write_text(json.dumps({"steps": 3}))
    assert read_record(csv) == {"steps": 3}
