"""Learning rates written ``3e-4`` are numbers wherever the config is read.

YAML 1.1 (PyYAML) reads a float only with a dot and a signed exponent, so ``3e-4`` used to reach
the schema as a string and be refused. Each entry point is tested: config files (profiles and
resolved configs), ``opd --set``, and Snakemake's ``--config`` and ``--configfile`` as they reach
the package.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import yaml

from opd.commands._common import load
from opd.config import (
    CONFIG_DIR,
    load_config,
    load_resolved,
    load_yaml,
    parse_override,
    yaml_leaves,
)

LR = "tasks.text.teacher.lr"


def teacher_lr(cfg: dict) -> float:
    return cfg["tasks"]["text"]["teacher"]["lr"]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3e-4", 3e-4),
        ("1e5", 1e5),
        ("1.0e5", 1e5),
        ("-2E+3", -2e3),
        (".5e-1", 0.05),
        ("2.0e-3", 2e-3),  # YAML 1.1 floats unchanged
        ("0.5", 0.5),
        ("3", 3),  # integers stay integers
        ("1_000", 1000),
        ("e5", "e5"),  # not numbers
        ("1e", "1e"),
        ("3e-4x", "3e-4x"),
        ("'3e-4'", "3e-4"),  # a quoted string stays a string
        ("true", True),
    ],
)
def test_config_yaml_reads_exponent_floats_as_numbers(text: str, value) -> None:
    read = load_yaml(text)
    assert read == value and type(read) is type(value)


def test_opd_set_takes_an_exponent_learning_rate() -> None:
    """``opd train --set tasks.text.teacher.lr=3e-4`` (was: "'3e-4' is not of type 'number'")."""
    assert parse_override(f"{LR}=3e-4") == (LR.split("."), 3e-4)
    from opd.cli import build_parser

    argv = ["train", "--profile", "mini", "--set", f"{LR}=3e-4"]
    args = build_parser().parse_args([*argv, "--run", "opd", "--seed", "0", "--out", "unused"])
    assert teacher_lr(load(args)) == 3e-4


def test_a_profile_file_with_an_exponent_learning_rate(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config_dir)
    profile = config_dir / "profiles" / "mini.yaml"
    text = profile.read_text(encoding="utf-8")
    assert "\n  lr: 2.0e-3\n" in text  # base.lr
    profile.write_text(text.replace("\n  lr: 2.0e-3\n", "\n  lr: 2e-3\n"), encoding="utf-8")
    assert load_config("mini", config_dir=config_dir)["base"]["lr"] == 2e-3


def test_a_resolved_config_file_with_an_exponent_learning_rate(tmp_path: Path) -> None:
    cfg = load_config("mini")
    cfg["tasks"]["text"]["teacher"]["lr"] = "LR"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg).replace("lr: LR", "lr: 3e-4"), encoding="utf-8")
    assert teacher_lr(load_resolved(path)) == 3e-4
    args = argparse.Namespace(config=path, profile=None, set_items=["base.lr=1e-3"])
    assert load(args)["base"]["lr"] == 1e-3


def test_snakemake_config_and_configfile_take_an_exponent_learning_rate(tmp_path: Path) -> None:
    """What ``rules/common.smk`` hands to ``load_config``: ``--config`` entries as Snakemake's
    own parser leaves them (strings, typed by ``yaml_leaves``) and a ``--configfile`` as
    Snakemake reads it (YAML 1.1: ``3e-4`` a string)."""
    snakemake_cli = pytest.importorskip("snakemake.cli")
    from snakemake.common.configfile import load_configfile

    entries = snakemake_cli.parse_config(["tasks={text: {teacher: {lr: 3e-4}}}"])
    assert teacher_lr(entries) == "3e-4"  # Snakemake's reading (YAML's BaseLoader)
    assert teacher_lr(load_config("mini", overrides=yaml_leaves(entries))) == 3e-4

    path = tmp_path / "overrides.yaml"
    path.write_text("tasks:\n  text:\n    teacher:\n      lr: 3e-4\n", encoding="utf-8")
    from_file = load_configfile(str(path))
    assert teacher_lr(from_file) == "3e-4"  # Snakemake's reading: why load_config converts
    assert teacher_lr(load_config("mini", overrides=from_file)) == 3e-4
