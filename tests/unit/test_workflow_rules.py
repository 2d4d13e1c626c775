"""benchmarks/workflow_rules.py: per-rule sums of Snakemake's benchmark files, written beside the
run by default so that the kept records under benchmarks/ change only when asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmark_run import load_script

REPO = Path(__file__).resolve().parents[2]
workflow_rules = load_script(REPO / "benchmarks/workflow_rules.py")

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(path: Path, wall: float, rss: float, cpu: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{wall}\t0:00:01\t{rss}\t0\t0\t0\t0\t0\t0\t{cpu}\n")


def test_default_output_is_beside_the_run_and_sums_per_rule(tmp_path: Path, monkeypatch) -> None:
    record = REPO / "benchmarks/mini_rules.json"
    before = record.read_bytes()
    bench = tmp_path / "benchmarks"
    _bench(bench / "mini/world/scorers.tsv", 300.0, 800.0, 290.0)
    _bench(bench / "mini/world/pretrain.tsv", 200.0, 1000.0, 380.0)
    _bench(bench / "mini/evals/base.tsv", 5.0, 500.0, 4.5)
    monkeypatch.setattr(workflow_rules, "ROOT", bench)
    assert workflow_rules.main(["--profile", "mini", "--wall", "400"]) == 0
    out = json.loads((tmp_path / "results/mini/workflow_rules.json").read_text())
    world = out["rules"]["world"]
    assert (world["jobs"], world["wall_s"], world["cpu_s"]) == (2, 500.0, 670.0)
    assert world["max_rss_mb"] == 1000.0 and out["rules"]["evals"]["jobs"] == 1
    assert out["parallel_efficiency"] == round(674.5 / (2 * 400), 3)
    assert record.read_bytes() == before

    kept = tmp_path / "kept.json"
    assert workflow_rules.main(["--profile", "mini", "--out", str(kept)]) == 0
    assert json.loads(kept.read_text())["sum_job_cpu_s"] == 674.5


def test_model_call_seconds_come_from_the_warm_ledger(tmp_path: Path, monkeypatch) -> None:
    bench = tmp_path / "benchmarks"
    _bench(bench / "mini/runs/opd/0.tsv", 100.0, 500.0, 1.0)  # a warm job: the client's CPU
    _bench(bench / "mini/runs/nft/0.tsv", 50.0, 400.0, 1.0)
    _bench(bench / "mini/evals/base.tsv", 10.0, 300.0, 9.0)  # a cold job: no sections
    logs = tmp_path / "logs/mini"
    sections = [
        {"forward": 20.0, "forward_grad": 30.0, "backward": 25.0, "score": 0.0},
        {"forward": 5.0, "forward_grad": 10.0, "backward": 10.0, "score": 2.0},
    ]
    with (bench / "mini/warm_jobs.jsonl").open("w") as fh:
        jobs = (("runs/opd/0", sections[0], 98.0), ("runs/nft/0", sections[1], 49.0))
        for job, secs, cpu in jobs:
            record = {"log": str(logs / f"{job}.log"), "wall_s": 1, "cpu_s": cpu, "max_rss_mb": 1}
            fh.write(json.dumps({**record, "sections": {"seconds": secs, "calls": {}}}) + "\n")
    monkeypatch.setattr(workflow_rules, "ROOT", bench)
    out_path = tmp_path / "rules.json"
    assert workflow_rules.main(["--profile", "mini", "--out", str(out_path)]) == 0
    out = json.loads(out_path.read_text())
    runs = out["rules"]["runs"]
    assert runs["cpu_s"] == 147.0 and runs["warm_jobs"] == 2
    expected = {"backward": 35.0, "forward": 25.0, "forward_grad": 40.0, "score": 2.0}
    assert runs["sections_s"] == expected
    assert runs["model_s"] == 102.0
    assert out["rules"]["evals"]["model_s"] == 0.0 and out["sum_job_model_s"] == 102.0


def test_groups_by_run_and_compares_with_an_earlier_run(tmp_path: Path, monkeypatch, capsys):
    bench = tmp_path / "benchmarks"
    _bench(bench / "mini/runs/opd/seed0.tsv", 10.0, 500.0, 8.0)
    _bench(bench / "mini/runs/opd/seed1.tsv", 10.0, 500.0, 6.0)
    _bench(bench / "mini/runs/nft/seed0.tsv", 10.0, 500.0, 20.0)
    _bench(bench / "mini/teachers/text.tsv", 10.0, 500.0, 5.0)  # one folder: its group is it
    monkeypatch.setattr(workflow_rules, "ROOT", bench)
    old = tmp_path / "old.json"
    assert workflow_rules.main(["--depth", "2", "--wall", "40", "--out", str(old)]) == 0
    rules = json.loads(old.read_text())["rules"]
    assert {k: v["cpu_s"] for k, v in rules.items()} == {
        "runs/opd": 14.0,
        "runs/nft": 20.0,
        "teachers": 5.0,
    }
    _bench(bench / "mini/runs/nft/seed0.tsv", 10.0, 500.0, 10.0)  # the next run: nft at half
    capsys.readouterr()
    args = ["--depth", "2", "--wall", "30", "--before", str(old), "--out", str(tmp_path / "n")]
    assert workflow_rules.main(args) == 0
    table = capsys.readouterr().out.split("cpu s before")[1]
    assert "20.0         10.0   0.50x" in table and "14.0         14.0   1.00x" in table
    assert "40.0         30.0   0.75x" in table  # the run's wall
    with pytest.raises(SystemExit):  # a record of another grouping cannot be compared
        workflow_rules.main(["--depth", "1", "--before", str(old), "--out", str(tmp_path / "x")])
