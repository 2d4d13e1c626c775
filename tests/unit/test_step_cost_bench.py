"""The step-cost benchmark runs end to end in its quick mode and writes well-formed JSON.

Timings depend on the machine, so nothing here compares a time or a ratio with a threshold:
the test checks the JSON's structure, that every ratio is a finite positive number, and that
the transformer calls recorded in each real run are the ones the method's formula requires.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.benchmark_run import load_script, run_benchmark

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "step_cost.py"
pytestmark = pytest.mark.slow  # the quick benchmark runs for minutes

METHODS = {"opd", "grpo", "grpo_guard", "nft", "multitask_grpo_guard"}
SAMPLERS = {"ode", "flow_sde", "dance_sde", "dpm2m"}


def _ratios(node, path=""):
    """Every (path, value) whose key contains 'ratio' or 'speedup', anywhere in the JSON."""
    if isinstance(node, dict):
        for key, value in node.items():
            if ("ratio" in key or key == "speedup") and not isinstance(value, dict | list):
                yield f"{path}.{key}", value
            else:
                yield from _ratios(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _ratios(value, f"{path}[{i}]")


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("step_cost") / "step_cost.json"
    stdout, data = run_benchmark(SCRIPT, ["--quick"], out, timeout=600)
    assert "acceptance" in stdout  # the printed table
    return data


def test_structure(bench_json: dict) -> None:
    res = bench_json
    assert {
        "meta",
        "acceptance",
        "rollout",
        "steps",
        "comparison",
        "scaling",
        "bf16",
        "gelu",
    } <= set(res)
    assert res["meta"]["quick"] is True and res["meta"]["threads"] == 1
    assert {r["sampler"] for r in res["rollout"]} == SAMPLERS
    assert {s["name"] for s in res["steps"]} == METHODS
    for s in res["steps"]:
        for key in ("seconds_per_step", "bare_seconds_per_step", "scorer_seconds_per_step"):
            assert s[key] >= 0
        assert s["model_evals_per_step"] > 0 and s["samples_per_step"] > 0
    rows = res["comparison"]["rows"]
    assert [r["name"] for r in rows] == ["opd", "multitask_grpo_guard", "grpo_guard_teacher"]
    assert rows[0]["relative_to_opd"] == 1.0
    for axis in ("tasks", "num_steps", "batch"):
        points = {r["point"] for r in res["scaling"][axis]}
        assert len(points) >= 2, axis
    assert {"forward", "forward_backward", "matmul_64", "matmul_1024"} <= set(res["bf16"])
    # the two GELU forms were both in effect: the velocity moved, though by little
    assert 0 < res["gelu"]["max_abs_change_over_std"] < 0.1
    acc = res["acceptance"]
    assert acc["bar"] == 1.15 and isinstance(acc["passed"], bool)


def test_every_ratio_is_finite_and_positive(bench_json: dict) -> None:
    found = list(_ratios(bench_json))
    assert len(found) > 20
    for where, value in found:
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, where


def test_recorded_calls_match_the_formulas(bench_json: dict) -> None:
    """The bare cost replays exactly the transformer work the mathematics requires."""
    rows = [*bench_json["rollout"], *bench_json["steps"], *bench_json["comparison"]["rows"]]
    rows += [r for axis in bench_json["scaling"].values() for r in axis]
    assert all(r["calls_match"] for r in rows), [r["name"] for r in rows if not r["calls_match"]]


def test_compiled_transformer_gives_the_eager_velocity(tmp_path: Path) -> None:
    """``--sections compile`` (not in the default run): against the same call in float64, the
    compiled call is as accurate as eager float32 (within 4x of its error: both are float32
    roundings, summed in different orders), and both timings are recorded."""
    stdout, data = run_benchmark(
        SCRIPT, ["--quick", "--sections", "compile"], tmp_path / "compile.json", timeout=600
    )
    assert "torch.compile / eager" in stdout and "rollout" not in data
    co = data["compile"]
    assert set(co["compile_s"]) == {"forward", "forward_other_adapter", "forward_backward"}
    assert all(s > 0 for s in co["compile_s"].values())
    assert 0 < co["eager_error_over_std"] < 1e-4  # float32 rounding, not a wrong computation
    assert co["compiled_error_over_std"] <= 4 * co["eager_error_over_std"]
    assert (
        co["max_abs_change_over_std"] <= co["eager_error_over_std"] + co["compiled_error_over_std"]
    )
    for k in ("forward", "forward_backward"):
        assert co[k]["eager_s"] > 0 and co[k]["compiled_s"] > 0


def test_acceptance_without_its_sections_is_not_measured() -> None:
    """A run of sections that time no rollout or step (``--sections compile``) says its
    acceptance was not measured, rather than printing a NaN ratio as a failure."""
    step_cost = load_script(SCRIPT)
    meta = {"profile": "mini", "command": "python benchmarks/step_cost.py --sections compile"}
    acc = {"bar": 1.15, "profile": "mini", "max_ratio": None, "passed": None}
    text = step_cost.format_table({"meta": meta, "acceptance": acc})
    assert "not measured" in text and "FAILED" not in text
    acc.update(max_ratio=1.2, passed=False)
    assert "max ratio 1.200, bar 1.15: FAILED" in step_cost.format_table(
        {"meta": meta, "acceptance": acc}
    )
