"""Summarise Snakemake's per-rule ``benchmark:`` files of one profile into JSON and a table.

Usage: ``python benchmarks/workflow_rules.py --profile mini [--wall SECONDS] [--out PATH]
[--depth 2] [--before OLD.json]``.
Reads every ``benchmarks/<profile>/**/*.tsv`` that the workflow wrote (one per job: wall seconds,
peak RSS, CPU time), groups them by rule (the first folder under the profile), and writes a JSON
with per-rule totals, the largest peak memory and, when the whole run's wall time is given, the
parallel efficiency (CPU-seconds of all jobs / cores x wall): by default
``results/<profile>/workflow_rules.json`` beside the run; the kept records
``benchmarks/<profile>_rules.json`` are written only when ``--out`` names them.

Warm-started jobs (``opd.warmstart``) run in a worker forked from the warm server, which
Snakemake's sampler does not see: their CPU time and peak memory come from the server's ledger
``benchmarks/<profile>/warm_jobs.jsonl`` (matched by log path), and the jobs that have a log but
no ``benchmark:`` file (tables, figures, collection) are counted from the ledger alone. The
ledger also holds each warm job's seconds inside model calls (`opd.calltime`: transformer
forwards with and without gradient, backwards, scorers, scorer training); the JSON sums them per
rule and the table shows the model calls' share of the rule's CPU seconds.

``--depth 2`` groups by the first two folders instead (``runs/opd``, ``evals/base``: one group per
run name). ``--before`` names an earlier run's JSON (written at the same depth) and adds a
before/after table of CPU seconds per group, with their ratio, and the two runs' wall times.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def warm_ledger(profile: str) -> dict[str, dict]:
    """Job (log path under ``logs/<profile>/`` without suffix) -> its last warm-start record."""
    path = ROOT / profile / "warm_jobs.jsonl"
    jobs: dict[str, dict] = {}
    if not path.exists():
        return jobs
    marker = f"logs/{profile}/"
    for line in path.read_text().splitlines():
        record = json.loads(line)
        log = str(record.get("log", ""))
        if marker in log:
            jobs[log.split(marker, 1)[1].rsplit(".", 1)[0]] = record
    return jobs


def group_of(job: str, depth: int) -> str:
    """The group of a job path (``runs/opd/seed0``): its first ``depth`` folders (at least one)."""
    parts = job.split("/")
    return "/".join(parts[: max(1, min(depth, len(parts) - 1))])


def collect(profile: str, depth: int = 1) -> dict[str, dict[str, float]]:
    rules: dict[str, dict[str, float]] = defaultdict(
        lambda: {
            "jobs": 0,
            "warm_jobs": 0,
            "wall_s": 0.0,
            "cpu_s": 0.0,
            "max_rss_mb": 0.0,
            "sections_s": defaultdict(float),
        }
    )
    base = ROOT / profile
    warm = warm_ledger(profile)

    def add(rule: str, wall: float, cpu: float, rss: float, record: dict | None) -> None:
        r = rules[rule]
        r["jobs"] += 1
        r["warm_jobs"] += int(record is not None)
        r["wall_s"] += wall
        r["cpu_s"] += cpu
        r["max_rss_mb"] = max(r["max_rss_mb"], rss)
        for name, seconds in (record or {}).get("sections", {}).get("seconds", {}).items():
            r["sections_s"][name] += float(seconds)

    for path in sorted(base.rglob("*.tsv")):
        job = str(path.relative_to(base).with_suffix(""))
        with path.open() as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                record = warm.pop(job, None)
                if record is not None:
                    cpu, rss = float(record["cpu_s"]), float(record["max_rss_mb"])
                else:
                    cpu = float(row.get("cpu_time") or 0.0)
                    value = row.get("max_rss")
                    rss = float(value) if value not in (None, "", "NA", "-") else 0.0
                add(group_of(job, depth), float(row["s"]), cpu, rss, record)
    for job, record in sorted(warm.items()):  # jobs without a benchmark file
        add(group_of(job, depth), record["wall_s"], record["cpu_s"], record["max_rss_mb"], record)
    for r in rules.values():
        r["sections_s"] = {k: round(v, 1) for k, v in sorted(r["sections_s"].items())}
        r["model_s"] = round(sum(r["sections_s"].values()), 1)
    return dict(rules)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--wall", type=float, default=None, help="the whole run's wall seconds")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON to write (default results/<profile>/workflow_rules.json; pass "
        "benchmarks/<profile>_rules.json to replace the kept record)",
    )
    parser.add_argument("--depth", type=int, default=1, help="group by this many folders")
    parser.add_argument("--before", type=Path, default=None, help="an earlier run's JSON")
    args = parser.parse_args(argv)
    before = json.loads(args.before.read_text()) if args.before else None
    if before is not None and before.get("depth", 1) != args.depth:
        parser.error(f"--before {args.before} was written with --depth {before.get('depth', 1)}")
    rules = collect(args.profile, args.depth)
    total_wall = sum(r["wall_s"] for r in rules.values())
    total_cpu = sum(r["cpu_s"] for r in rules.values())
    out = {
        "profile": args.profile,
        "depth": args.depth,
        "rules": rules,
        "sum_job_wall_s": round(total_wall, 1),
        "sum_job_cpu_s": round(total_cpu, 1),
        "sum_job_model_s": round(sum(r["model_s"] for r in rules.values()), 1),
        "max_rss_mb": max((r["max_rss_mb"] for r in rules.values()), default=0.0),
    }
    if args.wall:
        out["run_wall_s"] = args.wall
        out["parallel_efficiency"] = round(total_cpu / (args.cores * args.wall), 3)
    path = args.out or ROOT.parent / "results" / args.profile / "workflow_rules.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    w = max([16, *(len(name) for name in rules)])
    head = f"{'rule':{w}s} {'jobs':>5s} {'warm':>5s} {'wall s':>9s} {'cpu s':>9s} {'peak MB':>9s}"
    print(head + f" {'model s':>9s} {'model %':>8s}")
    for name, r in sorted(rules.items(), key=lambda kv: -kv[1]["wall_s"]):
        share = 100 * r["model_s"] / r["cpu_s"] if r["cpu_s"] else 0.0
        print(
            f"{name:{w}s} {r['jobs']:5d} {r['warm_jobs']:5d} {r['wall_s']:9.1f} {r['cpu_s']:9.1f}"
            f" {r['max_rss_mb']:9.1f} {r['model_s']:9.1f} {share:7.0f}%"
        )
    total_model = out["sum_job_model_s"]
    share = 100 * total_model / total_cpu if total_cpu else 0.0
    print(
        f"{'all jobs':{w}s} {'':11s} {total_wall:9.1f} {total_cpu:9.1f} {out['max_rss_mb']:9.1f}"
        f" {total_model:9.1f} {share:7.0f}%"
    )
    if before is not None:
        print_before_after(before, out)
    return 0


def print_before_after(before: dict, after: dict) -> None:
    """CPU seconds per group in both runs and their ratio; the runs' wall times when known."""
    print(f"\n{'group':28s} {'cpu s before':>12s} {'cpu s after':>12s} {'ratio':>7s}")
    old, new = before["rules"], after["rules"]
    for name in sorted(set(old) | set(new), key=lambda n: -old.get(n, new.get(n))["cpu_s"]):
        a = old[name]["cpu_s"] if name in old else float("nan")
        b = new[name]["cpu_s"] if name in new else float("nan")
        print(f"{name:28s} {a:12.1f} {b:12.1f} {b / a if a else float('nan'):6.2f}x")
    a, b = before["sum_job_cpu_s"], after["sum_job_cpu_s"]
    print(f"{'all jobs':28s} {a:12.1f} {b:12.1f} {b / a:6.2f}x")
    if before.get("run_wall_s") and after.get("run_wall_s"):
        a, b = before["run_wall_s"], after["run_wall_s"]
        print(f"{'run wall (s)':28s} {a:12.1f} {b:12.1f} {b / a:6.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
