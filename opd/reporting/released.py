"""The table of released models: published adapters scored here beside what their authors report.

One row per model and benchmark column: the base pipeline without and with CFG, then every entry
of the config's ``released.adapters``. Our value is the mean over evaluation seeds of the
column's per-seed values, with its standard error ``sd / sqrt(n)`` over those seeds (the
seeds' spread, as the properties' SEs; NaN with one seed). Beside it stands the authors'
value with its protocol and source, and a comparison:

- ``not reported`` where nobody reported a value for that model and column;
- ``protocol differs`` where a stated field of the authors' protocol (the task's prompt set and
  prompt count, images per prompt, ODE steps, CFG, resolution) differs from the one that ran
  here (the evaluation's record, :mod:`opd.published`);
- ``protocol not stated`` where none differs but the source leaves one open;
- otherwise the difference in our standard errors, ``(ours - reported) / SE``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from opd.released import adapters, released_section
from opd.reporting.tables import column_label, decimals_for, format_mean_std

NOT_REPORTED = "not reported"
DIFFERS = "protocol differs"
UNSTATED = "protocol not stated"
BASE_RUNS = {"base_nocfg": "nocfg", "base_cfg": "cfg"}
FIELDS = ("images_per_prompt", "steps", "guidance", "resolution")
COLUMNS = (
    "model",
    "label",
    "hub",
    "subfolder",
    "revision",
    "commit",
    "guidance",
    "benchmark",
    "column",
    "ours",
    "se",
    "n_seeds",
    "reported",
    "comparison",
    "diff_se",
    "reported_protocol",
    "our_protocol",
    "source",
    "scorer",
)


def our_protocol(record: Mapping[str, Any], run: str, task: str) -> dict[str, Any]:
    """The protocol that ran for ``run`` on ``task``'s column, from its evaluation's record."""
    prompts = record["tasks"][task]
    return {
        "prompts": {task: {"set": prompts["set"], "count": int(prompts["count"])}},
        "images_per_prompt": int(prompts["images_per_prompt"]),
        "steps": int(record["steps"]),
        "guidance": float(record["guidance"][run]),
        "resolution": int(record["resolution"]),
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def compare_protocol(ours: Mapping[str, Any], reported: Mapping[str, Any] | None, task: str) -> str:
    """``same``, ``differs`` (a stated field differs) or ``unstated`` (none differs, one is
    left open) for the column of task ``task``."""
    reported = dict(reported or {})
    stated = {f: reported.get(f) for f in FIELDS}
    stated["prompts"] = (reported.get("prompts") or {}).get(task)
    mine = {**{f: ours[f] for f in FIELDS}, "prompts": ours["prompts"][task]}
    if any(v is not None and not _same(v, mine[f]) for f, v in stated.items()):
        return "differs"
    return "unstated" if any(v is None for v in stated.values()) else "same"


def describe_protocol(protocol: Mapping[str, Any] | None, task: str) -> str:
    """A protocol in a few words; ``?`` marks what its source leaves open."""
    protocol = dict(protocol or {})
    prompts = (protocol.get("prompts") or {}).get(task)
    parts = [f"{prompts['set']} x{prompts['count']}" if prompts else "prompts ?"]
    for field, unit in (("images_per_prompt", "img/prompt"), ("steps", "steps")):
        value = protocol.get(field)
        parts.append(f"{value if value is not None else '?'} {unit}")
    cfg = protocol.get("guidance")
    parts.append(f"CFG {cfg:g}" if cfg is not None else "CFG ?")
    res = protocol.get("resolution")
    parts.append(f"{res} px" if res is not None else "? px")
    return ", ".join(parts)


def seed_values(frame: pd.DataFrame, run: str, column: str) -> pd.Series:
    """Per evaluation seed, ``run``'s value of ``column`` (its final checkpoint's rows)."""
    rows = frame[(frame["run"] == run) & (frame["column"] == column)]
    return rows.groupby("eval_seed")["value"].mean()


def mean_se(values: pd.Series) -> tuple[float, float, int]:
    """Mean, standard error over evaluation seeds (``sd / sqrt(n)``; NaN below 2) and n."""
    n = int(values.count())
    if n == 0:
        return math.nan, math.nan, 0
    se = float(values.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return float(values.mean()), se, n


def comparison(ours: float, se: float, reported: float | None, match: str) -> tuple[str, float]:
    """The comparison cell and, where the protocols match, the difference in our SEs."""
    if reported is None:
        return NOT_REPORTED, math.nan
    if match == "differs":
        return DIFFERS, math.nan
    if match == "unstated":
        return UNSTATED, math.nan
    diff = (ours - reported) / se if se > 0 else math.nan
    return (f"{diff:+.1f} SE" if math.isfinite(diff) else "SE unknown"), diff


def _models(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every row group: the base twice (its runs), then each adapter (run = its name)."""
    section = released_section(cfg)
    base = dict(section.get("base") or {})
    label = base.get("label") or base.get("hub", "base")
    out = []
    for run, key in BASE_RUNS.items():
        suffix = "w/o CFG" if key == "nocfg" else "+ CFG"
        out.append(
            {
                "model": run,
                "label": f"{label} {suffix}",
                "hub": base.get("hub"),
                "subfolder": None,
                "revision": base.get("revision"),
                "reported": (base.get("reported") or {}).get(key),
                "base": True,
            }
        )
    for name, entry in adapters(cfg).items():
        out.append({**entry, "model": name, "label": entry.get("label") or name, "base": False})
    return out


def released_table(
    cfg: Mapping[str, Any],
    evals: Mapping[str, Path],
    records: Mapping[str, Mapping[str, Any]],
) -> pd.DataFrame:
    """The long table (:data:`COLUMNS`): ``evals`` maps each model (``base`` for both base
    runs, else the adapter's name) to its eval CSV, ``records`` to its evaluation's record."""
    rows = []
    for model in _models(cfg):
        key = "base" if model["base"] else model["model"]
        frame = pd.read_csv(evals[key])
        record = records[key]
        reported = model.get("reported") or {}
        commit = (record.get("source") or {}).get("commit")
        for column, spec in cfg["benchmarks"].items():
            task = spec["task"]
            ours_p = our_protocol(record, model["model"], task)
            mean, se, n = mean_se(seed_values(frame, model["model"], column))
            value = (reported.get("values") or {}).get(column)
            match = compare_protocol(ours_p, reported.get("protocol"), task)
            text, diff = comparison(mean, se, None if value is None else float(value), match)
            rows.append(
                {
                    "model": model["model"],
                    "label": model["label"],
                    "hub": model.get("hub"),
                    "subfolder": model.get("subfolder"),
                    "revision": model.get("revision"),
                    "commit": commit,
                    "guidance": ours_p["guidance"],
                    "benchmark": column,
                    "column": column_label(cfg, column),
                    "ours": mean,
                    "se": se,
                    "n_seeds": n,
                    "reported": math.nan if value is None else float(value),
                    "comparison": text,
                    "diff_se": diff,
                    "reported_protocol": (
                        describe_protocol(reported.get("protocol"), task) if reported else ""
                    ),
                    "our_protocol": describe_protocol(ours_p, task),
                    "source": reported.get("source", "") if reported else "",
                    "scorer": (record.get("scorers") or {}).get(spec["scorer"], ""),
                }
            )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def to_markdown(table: pd.DataFrame, cfg: Mapping[str, Any]) -> str:
    """The table as Markdown: a block per model, then where each number came from."""
    lines = [f"## Released models (profile {cfg.get('profile')})", ""]
    for model, rows in table.groupby("model", sort=False):
        first = rows.iloc[0]
        where = first["hub"] or ""
        if isinstance(first["subfolder"], str) and first["subfolder"]:
            where += f" / {first['subfolder']}"
        rev = first["revision"] if isinstance(first["revision"], str) else "main"
        commit = first["commit"] if isinstance(first["commit"], str) else "not resolved"
        lines += [
            f"### {first['label']} (`{model}`)",
            "",
            f"{where} at {rev} (commit {commit}); evaluated at CFG {first['guidance']:g}.",
            "",
        ]
        cells = []
        for _, r in rows.iterrows():
            d = decimals_for([r["ours"], r["reported"]])
            reported = "–" if math.isnan(r["reported"]) else f"{r['reported']:.{d}f}"
            cells.append(
                {
                    "benchmark": r["column"],
                    "ours ± SE": format_mean_std(r["ours"], r["se"], d),
                    "reported": reported,
                    "comparison": r["comparison"],
                    "reported protocol": r["reported_protocol"] or "–",
                    "scorer runs in": r["scorer"] or "–",
                }
            )
        lines += [pd.DataFrame(cells).to_markdown(index=False, disable_numparse=True), ""]
        protocols: dict[str, list[str]] = {}
        for _, r in rows.iterrows():
            protocols.setdefault(r["our_protocol"], []).append(r["column"])
        lines += [f"Our protocol ({', '.join(c)}): {p}" for p, c in protocols.items()]
        sources = sorted({s for s in rows["source"] if isinstance(s, str) and s})
        lines += [f"Source: {s}" for s in sources] or ["Source: nobody reported numbers"]
        lines.append("")
    lines += [
        "Ours: mean ± standard error over evaluation seeds (sd / sqrt(n)). Comparison: the "
        "difference in our SEs where the authors' stated protocol is ours; 'protocol differs' "
        "where a stated field differs; 'protocol not stated' where the source leaves one open; "
        "'not reported' where nobody reported a value.",
        "",
    ]
    return "\n".join(lines)


def write_released(table: pd.DataFrame, cfg: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write ``released.csv`` and ``released.md`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "released.csv", out_dir / "released.md"
    table.to_csv(csv_path, index=False, float_format="%.6g")
    md_path.write_text(to_markdown(table, cfg), encoding="utf-8")
    return [csv_path, md_path]
