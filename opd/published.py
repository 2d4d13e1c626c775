"""Published adapters (the config's ``released`` entries) evaluated under the profile's protocol.

:func:`evaluate_released_base` scores the adapters' base pipeline (``released.base``: a hub id
and revision, loaded through the huggingface_hub cache) without and with CFG, as Table 1's first
two rows; :func:`evaluate_released` scores one fetched adapter on it at the CFG it was trained
for. Each writes its eval CSV (the rows of :mod:`opd.evaluation`) and beside it ``<name>.json``,
the record of what ran: the protocol (ODE steps, CFG, resolution, evaluation seeds and, per task,
the prompt set, its prompt count and the images of each prompt), where each scorer ran (its
container image) and where the weights came from (hub id, subfolder, revision and the commit it
resolved to). :mod:`opd.reporting.released` compares that record with the protocol the
adapter's authors report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from opd.config import ConfigError
from opd.data import SOURCE_NAME
from opd.evaluation import Evaluator, evaluate_adapter, evaluate_base
from opd.released import adapters, base_source, record_path
from opd.training.context import load_base_model


def _write_record(
    eval_csv: Path,
    evaluator: Evaluator,
    guidance: dict[str, float],
    source: dict[str, Any],
    scorer_images: dict[str, str] | None,
) -> Path:
    """Write the record beside ``eval_csv``: the evaluator's protocol, each run's CFG, where
    the weights came from and where each scorer ran."""
    record = {
        **evaluator.protocol(),
        "guidance": guidance,
        "source": source,
        "scorers": dict(scorer_images or {}),
    }
    path = record_path(eval_csv)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def base_provenance(base: dict[str, Any]) -> dict[str, Any]:
    """Where ``released.base`` came from: its hub id, revision and, for a hub id in the
    huggingface_hub cache, the commit that revision resolved to (None for a local folder)."""
    hub, revision = str(base["hub"]), base.get("revision")
    commit = None
    if not Path(hub).exists():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(hub, "model_index.json", revision=revision)
        commit = Path(cached).parent.name if isinstance(cached, str) else None
    return {"source": hub, "subfolder": None, "revision": revision, "commit": commit}


def _evaluator(profile: dict[str, Any]) -> Evaluator:
    base = base_source(profile)
    if not base.get("hub"):
        raise ConfigError("released.base: no base pipeline configured (hub, revision)")
    return Evaluator(load_base_model(profile, base), profile)


def evaluate_released_base(
    profile: dict[str, Any], out: Path, scorer_images: dict[str, str] | None = None
) -> Path:
    """Evaluate ``released.base`` without CFG (``base_nocfg``) and with ``eval.guidance``
    (``base_cfg``); writes the eval CSV ``out`` and its record."""
    evaluator = _evaluator(profile)
    evaluate_base(profile, Path(out), evaluator=evaluator)
    guidance = {"base_nocfg": 1.0, "base_cfg": float(profile["eval"]["guidance"])}
    source = base_provenance(base_source(profile))
    _write_record(Path(out), evaluator, guidance, source, scorer_images)
    return Path(out)


def evaluate_released(
    profile: dict[str, Any],
    name: str,
    adapter_dir: Path,
    out: Path,
    scorer_images: dict[str, str] | None = None,
) -> Path:
    """Evaluate the fetched released adapter ``name`` (its folder ``adapter_dir``, written by
    ``python -m opd.data adapter``) on ``released.base`` at the CFG it was trained for; writes the
    eval CSV ``out`` (run ``name``, method ``released``) and its record."""
    known = adapters(profile)
    if name not in known:
        raise ConfigError(
            f"released adapter {name!r} is not an entry of released.adapters; known: "
            f"{', '.join(known) or 'none'}"
        )
    guidance = float(known[name]["guidance"])
    evaluator = _evaluator(profile)
    evaluate_adapter(
        profile,
        Path(adapter_dir),
        name,
        Path(out),
        guidance=guidance,
        method="released",
        evaluator=evaluator,
    )
    provenance = Path(adapter_dir) / SOURCE_NAME
    source = json.loads(provenance.read_text()) if provenance.is_file() else {}
    _write_record(Path(out), evaluator, {name: guidance}, source, scorer_images)
    return Path(out)
