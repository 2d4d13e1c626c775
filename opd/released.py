"""Published adapters: the config's ``released`` section and the teachers that name its entries.

``released.base`` is the pipeline the adapters adapt (hub id and revision) and
``released.adapters`` lists each published LoRA: its hub id, subfolder and revision, the CFG
scale it was trained for (and is evaluated at), and the numbers its authors report, with their
protocol and source (``reported: null`` where nobody reported any). Adding one is a config
edit; ``snakemake released`` evaluates them all (``rules/released.smk``). A task's
``teacher.pretrained`` may name an entry (``{released: <name>}``) to distil from it.

The schema checks every entry's keys; :func:`validate_released` checks what it cannot: every
reported benchmark is a column of the profile and every protocol task one of its tasks, names are
unique, a teacher that names an entry finds it and is queried at the CFG it was trained for. A
bad entry stops the workflow while it parses the Snakefile, before any job, naming the key.
Torch-free, like :mod:`opd.config`, which calls it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ReleasedConfigError(ValueError):
    """A ``released`` entry (or a teacher naming one) that cannot be used; names the key."""


def released_section(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``released`` section, or an empty one (no base, no adapters)."""
    return dict(cfg.get("released") or {})


def adapters(cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Name -> entry of every published adapter, in the config's order."""
    return {a["name"]: dict(a) for a in released_section(cfg).get("adapters") or []}


def base_source(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The released adapters' base pipeline: ``released.base`` (hub id, revision)."""
    return dict(released_section(cfg).get("base") or {})


def _check_reported(reported: Any, where: str, cfg: Mapping[str, Any]) -> None:
    if not reported:
        return
    columns = list(cfg.get("benchmarks") or {})
    for key in reported.get("values") or {}:
        if key not in columns:
            raise ReleasedConfigError(
                f"{where}.values.{key}: not a benchmark of this profile; known: "
                f"{', '.join(columns)}"
            )
    tasks = list(cfg.get("tasks") or {})
    for key in (reported.get("protocol") or {}).get("prompts") or {}:
        if key not in tasks:
            raise ReleasedConfigError(
                f"{where}.protocol.prompts.{key}: not a task of this profile; known: "
                f"{', '.join(tasks)}"
            )


def teacher_adapter(cfg: Mapping[str, Any], task: str) -> str | None:
    """The released entry that task ``task``'s teacher names (``pretrained: {released: X}``)."""
    pretrained = ((cfg.get("tasks") or {}).get(task, {}).get("teacher") or {}).get("pretrained")
    return pretrained.get("released") if isinstance(pretrained, Mapping) else None


def validate_released(cfg: Mapping[str, Any]) -> None:
    """Check the ``released`` entries and the teachers naming them (see the module docstring);
    raises :class:`ReleasedConfigError` naming the key."""
    section = released_section(cfg)
    seen: dict[str, int] = {}
    for i, entry in enumerate(section.get("adapters") or []):
        where = f"released.adapters[{i}]"
        name = entry["name"]
        if name in seen:
            raise ReleasedConfigError(
                f"{where}.name: {name!r} is also released.adapters[{seen[name]}]'s name"
            )
        seen[name] = i
        _check_reported(entry.get("reported"), f"{where}.reported", cfg)
    for cfg_key, reported in ((section.get("base") or {}).get("reported") or {}).items():
        _check_reported(reported, f"released.base.reported.{cfg_key}", cfg)
    known = adapters(cfg)
    for task, spec in (cfg.get("tasks") or {}).items():
        name = teacher_adapter(cfg, task)
        if name is None:
            continue
        where = f"tasks.{task}.teacher.pretrained.released"
        if name not in known:
            raise ReleasedConfigError(
                f"{where}: {name!r} is not an entry of released.adapters; known: "
                f"{', '.join(known) or 'none'}"
            )
        guidance = (spec.get("teacher") or {}).get("guidance")
        trained = float(known[name]["guidance"])
        if guidance is not None and float(guidance) != trained:
            raise ReleasedConfigError(
                f"tasks.{task}.teacher.guidance: {guidance}, but the published teacher "
                f"{name!r} was trained for CFG {trained} (released.adapters[{seen[name]}].guidance)"
            )


def pretrained_teachers(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Task -> what its fetched teacher comes from: a hub id or folder (str), or a released
    entry's name as ``{released: name}``; only the tasks whose teacher is not trained."""
    out = {}
    for task, spec in (cfg.get("tasks") or {}).items():
        pretrained = (spec.get("teacher") or {}).get("pretrained")
        if pretrained:
            out[task] = pretrained
    return out


def downloaded_teacher_hours(cfg: Mapping[str, Any]) -> dict[str, float | None]:
    """Task -> its downloaded teacher's training GPU hours as its authors report them
    (``reported.train_hours`` of the released entry it names), None where not reported."""
    known = adapters(cfg)
    out: dict[str, float | None] = {}
    for task in pretrained_teachers(cfg):
        name = teacher_adapter(cfg, task)
        reported = ((known.get(name) or {}).get("reported") or {}) if name else {}
        hours = reported.get("train_hours")
        out[task] = None if hours is None else float(hours)
    return out


def record_path(eval_csv: str | Path) -> Path:
    """The record of what a released-model evaluation ran (:mod:`opd.published`), beside its
    eval CSV (``eval.csv`` -> ``eval.json``)."""
    return Path(eval_csv).with_suffix(".json")


def read_record(eval_csv: str | Path) -> dict[str, Any]:
    """The record beside ``eval_csv``; a missing one is named."""
    path = record_path(eval_csv)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no record beside {eval_csv} (rerun its evaluation)")
    return json.loads(path.read_text(encoding="utf-8"))
