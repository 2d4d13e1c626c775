"""Configuration as validated data: profile files, overrides, schema checks, method configs.

A profile (``config/profiles/<name>.yaml``) is deep-merged over ``config/defaults.yaml`` and then
over user overrides (Snakemake ``--config`` or CLI ``--set key=value``), and validated against
``schemas/config.schema.json`` before anything runs. Method sections are validated again by the
registered method's config dataclass, so an unknown or ill-typed key is reported with its full
path. :func:`config_hash` gives the stable hash that checkpoints record.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from opd import manifest
from opd.registry import METHODS
from opd.released import ReleasedConfigError, validate_released

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "config"
SCHEMA_PATH = REPO_ROOT / "schemas" / "config.schema.json"


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


# YAML 1.1 (PyYAML) reads a float only with a dot and a signed exponent: ``3e-4``, ``1e5`` and
# ``1.0e5`` stay strings. That is how learning rates are written, so every config reader here
# (files, ``--set``, Snakemake's ``--config`` and ``--configfile``) reads them as YAML 1.2 does.
_EXPONENT_FLOAT = r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+"


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads exponent floats without a dot or exponent sign."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(f"^{_EXPONENT_FLOAT}$"), list("-+0123456789.")
)


def load_yaml(text: str) -> Any:
    """Read config YAML: ``yaml.safe_load``, but ``3e-4`` is a number (see ``ConfigLoader``)."""
    return yaml.load(text, Loader=ConfigLoader)


def numbers_as_floats(value: Any) -> Any:
    """``value`` with every string leaf written as an exponent float (``'3e-4'``) made a float:
    for values that another YAML 1.1 reader has parsed already (Snakemake's ``--configfile``)."""
    if isinstance(value, Mapping):
        return {k: numbers_as_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [numbers_as_floats(v) for v in value]
    if isinstance(value, str) and re.fullmatch(_EXPONENT_FLOAT, value):
        return float(value.replace("_", ""))
    return value


def yaml_leaves(value: Any) -> Any:
    """``value`` with every string leaf read as config YAML: Snakemake reads nested ``--config``
    values with YAML's BaseLoader, as strings, so that ``'seeds=[0,1]'`` gives integers here."""
    if isinstance(value, Mapping):
        return {k: yaml_leaves(v) for k, v in value.items()}
    if isinstance(value, list):
        return [yaml_leaves(v) for v in value]
    if isinstance(value, str):
        try:
            return load_yaml(value)
        except yaml.YAMLError:
            return value
    return value


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, others replace)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file is not UTF-8: {path} ({err})") from None
    data = load_yaml(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value read as config YAML) into a key path and a value."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    return key.split("."), load_yaml(raw)


def apply_overrides(cfg: dict[str, Any], items: list[str]) -> dict[str, Any]:
    for item in items:
        path, value = parse_override(item)
        node = cfg
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a mapping")
        node[path[-1]] = value
    return cfg


def load_config(
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    set_items: list[str] | None = None,
    config_dir: Path = CONFIG_DIR,
) -> dict[str, Any]:
    """Load, merge and validate the configuration of ``profile`` (default: ``mini``).

    ``overrides`` (Snakemake's config) may come from another YAML 1.1 reader: their exponent
    floats written as strings are read as numbers.
    """
    overrides = numbers_as_floats(dict(overrides or {}))
    profile = profile or overrides.get("profile") or "mini"
    profile_path = config_dir / "profiles" / f"{profile}.yaml"
    if not profile_path.exists():
        known = sorted(p.stem for p in (config_dir / "profiles").glob("*.yaml"))
        raise ConfigError(f"unknown profile {profile!r}; known: {', '.join(known)}")
    cfg = deep_merge(_read_yaml(config_dir / "defaults.yaml"), _read_yaml(profile_path))
    cfg = deep_merge(cfg, overrides)
    cfg["profile"] = profile
    cfg = apply_overrides(cfg, list(set_items or []))
    fill_paths(cfg)
    validate_config(cfg)
    return cfg


def fill_paths(cfg: dict[str, Any]) -> dict[str, Any]:
    """Default artifact locations under ``results/<profile>`` (relative to the working dir)."""
    paths = cfg.setdefault("paths", {})
    root = paths.setdefault("results", f"results/{cfg['profile']}")
    paths.setdefault("world", f"{root}/world")
    paths.setdefault("scorers", f"{root}/scorers")
    paths.setdefault("base", f"{root}/base")
    return cfg


def load_resolved(path: Path, set_items: list[str] | None = None) -> dict[str, Any]:
    """Load a resolved config file (as written by the workflow) and validate it again."""
    cfg = apply_overrides(_read_yaml(Path(path)), list(set_items or []))
    fill_paths(cfg)
    validate_config(cfg)
    return cfg


def write_resolved(cfg: dict[str, Any], path: Path) -> bool:
    """Write ``cfg`` as YAML unless the file already holds the same content (keeps mtimes)."""
    text = yaml.safe_dump(cfg, sort_keys=False)
    path = Path(path)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return True


def _format_path(path: typing.Iterable[Any]) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate_config(cfg: Mapping[str, Any], schema_path: Path = SCHEMA_PATH) -> None:
    """Validate against the JSON schema, then every method section against its dataclass (found
    through :mod:`opd.manifest`: no torch import for the built-in methods)."""
    import jsonschema

    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {_format_path(e.absolute_path)}: {e.message}" for e in errors[:10]]
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))

    methods = cfg.get("methods") or {}
    for key in ("table1", "ablations"):
        for i, run_name in enumerate(cfg.get(key) or []):
            if run_name not in methods:
                raise ConfigError(
                    f"{key}[{i}]: {run_name!r} is not a key of methods; known: "
                    f"{', '.join(sorted(methods))}"
                )
    listed = {*(cfg.get("table1") or []), *(cfg.get("ablations") or [])}
    for run_name in cfg.get("run_seeds") or {}:
        if run_name not in listed:
            raise ConfigError(
                f"run_seeds.{run_name}: not a run of table1 or ablations; listed: "
                f"{', '.join(sorted(listed))}"
            )
    runs = [(run, f"methods.{run}") for run in methods]
    runs += [(f"teacher_{task}", f"tasks.{task}.teacher") for task in cfg.get("tasks") or {}]
    for run_name, where in runs:
        method, section = method_section(cfg, run_name)
        try:
            config_cls = manifest.method_config(method)
        except KeyError as err:
            raise ConfigError(f"{where}.method: {err}") from None
        build_dataclass(config_cls, section, where)
    _check_scorer_names(cfg)
    try:
        validate_released(cfg)
    except ReleasedConfigError as err:
        raise ConfigError(f"invalid configuration: {err}") from None
    split = (cfg.get("base") or {}).get("split")
    if split and not split["at"] < cfg["base"].get("steps", 0):
        raise ConfigError(
            f"base.split.at: {split['at']} must be below base.steps ({cfg['base'].get('steps')})"
        )


def run_seeds(cfg: Mapping[str, Any]) -> dict[str, list[int]]:
    """Run name -> training seeds: Table-1 runs take ``seeds``, ablations ``ablation_seeds``,
    and a run named in ``run_seeds`` its own list (a run in both tables: the union)."""
    own = cfg.get("run_seeds") or {}
    seeds: dict[str, set[int]] = {}
    for key, default in (("table1", "seeds"), ("ablations", "ablation_seeds")):
        for run in cfg.get(key) or []:
            seeds.setdefault(run, set()).update(own.get(run, cfg.get(default) or []))
    return {run: sorted(s) for run, s in seeds.items()}


def method_section(cfg: Mapping[str, Any], run: str) -> tuple[str, dict[str, Any]]:
    """The method name and the config section of run ``run``, ``method_defaults`` merged in:
    the one place that maps a run to its method (training, evaluation, reporting, the rules).

    ``run`` is a key of ``methods`` or ``teacher_<task>``, whose section is the task's
    ``teacher`` entry (its ``guidance`` also serves as its evaluation guidance; its ``tasks``
    default to its own task; ``pretrained`` is the workflow's, not the method's). ``KeyError``
    for a run the config does not define.
    """
    defaults = dict(cfg.get("method_defaults") or {})
    methods = cfg.get("methods") or {}
    if run in methods:
        section = {**defaults, **dict(methods[run] or {})}
        return section.pop("method", run), section
    task = run.removeprefix("teacher_")
    if not run.startswith("teacher_") or task not in (cfg.get("tasks") or {}):
        known = ", ".join(sorted(methods))
        raise KeyError(f"unknown run {run!r}; known: {known} and teacher_<task>")
    teacher = dict(cfg["tasks"][task].get("teacher") or {})
    if "method" not in teacher:  # no trained teacher: as unknown as a misspelt run
        raise KeyError(f"run {run!r}: tasks.{task}.teacher names no method")
    section = {**defaults, **teacher}
    section.pop("pretrained", None)  # a published adapter: fetched by the workflow, not trained
    name = section.pop("method")
    guidance = section.pop("guidance", None)
    if guidance is not None:  # the teacher's own CFG, in training and at evaluation
        section["guidance"] = guidance
        section.setdefault("eval_guidance", guidance)
    section.setdefault("tasks", [task])
    return name, section


def resolve_method(cfg: Mapping[str, Any], run: str) -> tuple[type, Any, dict[str, Any]]:
    """The method class, its validated config dataclass and the raw section (``method``
    included) of run ``run``, as :func:`method_section` resolves it; imports the method modules."""
    name, section = method_section(cfg, run)
    cls = METHODS.get(name)
    method_cfg = build_dataclass(cls.Config, section, f"methods.{run}")
    return cls, method_cfg, {"method": name, **section}


def _check_scorer_names(cfg: Mapping[str, Any]) -> None:
    """Every scorer the config names (rewards, benchmark columns, learned scorers) exists."""
    named = [(f"learned_scorers[{i}]", n) for i, n in enumerate(cfg.get("learned_scorers") or [])]
    for task, section in (cfg.get("tasks") or {}).items():
        named += [(f"tasks.{task}.reward.{n}", n) for n in section.get("reward") or {}]
    for column, spec in (cfg.get("benchmarks") or {}).items():
        named.append((f"benchmarks.{column}.scorer", spec.get("scorer")))
    for where, name in named:
        try:
            manifest.scorer(name)
        except KeyError as err:
            raise ConfigError(f"{where}: {err}") from None


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {tp}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected one of {typing.get_args(tp)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build_dataclass(cls: type, data: Mapping[str, Any] | None, where: str) -> Any:
    """Build ``cls`` from ``data``; unknown keys and ill-typed values name their path."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
    return obj


def config_hash(cfg: Any) -> str:
    """A stable short hash of a JSON-serialisable config (dataclasses allowed)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
