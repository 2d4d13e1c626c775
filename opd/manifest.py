"""A light description of the registered methods and scorers, so that the workflow can check a
config without importing torch.

Snakemake parses the Snakefile on every call, a dry run included; importing the registries'
modules there would import torch, transformers and diffusers each time. ``opd/manifest.json``
holds what parsing needs: per method, whether it distils from teachers and where its config
dataclass lives (``module:Class``, in a torch-free module: :mod:`opd.training.options`,
``baselines._configs``); per scorer, its default backend and whether it is one of the paper's.
It is generated from the registries (``python -m opd.manifest``), and a test checks that it
still matches them. A name the manifest does not hold (a baseline file just dropped in
``baselines/``, a plugin) makes the lookups fall back to the registries themselves: correct,
only slower.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
from functools import cache
from pathlib import Path
from typing import Any

from opd.registry import METHODS, SCORERS

MANIFEST_PATH = Path(__file__).with_name("manifest.json")
PAPER_PACKAGE = "opd.rewards.paper"


def _method_entry(cls: Any) -> dict[str, Any]:
    config = cls.Config
    return {
        "needs_teachers": bool(cls.needs_teachers),
        "config": f"{config.__module__}:{config.__qualname__}",
    }


def _scorer_entry(name: str, factory: Any) -> dict[str, Any]:
    param = inspect.signature(factory).parameters.get("backend")
    empty = param is None or param.default is inspect.Parameter.empty
    # a paper scorer is one that opd.rewards.paper defines (read, not imported: this module
    # sits below the rewards)
    paper = str(getattr(factory, "__module__", "")).startswith(PAPER_PACKAGE)
    return {"backend": "local" if empty else str(param.default), "paper": paper}


def build() -> dict[str, Any]:
    """The manifest, from the registries (imports every method and scorer module)."""
    return {
        "methods": {name: _method_entry(cls) for name, cls in METHODS.items()},
        "scorers": {name: _scorer_entry(name, f) for name, f in SCORERS.items()},
    }


@cache
def load() -> dict[str, Any]:
    """The manifest as shipped (empty parts when the file is missing)."""
    if not MANIFEST_PATH.exists():
        return {"methods": {}, "scorers": {}}
    return json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))


def method(name: str) -> dict[str, Any]:
    """Method ``name``'s entry: from the manifest, else from the registry (imports it; an
    unknown name raises the registry's error, which lists the known ones)."""
    entry = load()["methods"].get(name)
    if entry is None:
        entry = _method_entry(METHODS.get(name))
    return entry


def method_config(name: str) -> type:
    """The config dataclass of method ``name``, imported from where the manifest says."""
    module, _, qualname = method(name)["config"].partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def scorer(name: str) -> dict[str, Any]:
    """Scorer ``name``'s entry: from the manifest, else from the registry (imports it)."""
    entry = load()["scorers"].get(name)
    if entry is None:
        entry = _scorer_entry(name, SCORERS.get(name))
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write (or --check) opd/manifest.json.")
    p.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = p.parse_args(argv)
    text = json.dumps(build(), indent=1, sort_keys=True) + "\n"
    if args.check:
        current = MANIFEST_PATH.read_text(encoding="utf-8") if MANIFEST_PATH.exists() else ""
        if current != text:
            print(f"{MANIFEST_PATH} is out of date: run python -m opd.manifest")
            return 1
        return 0
    MANIFEST_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {MANIFEST_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
