"""Run sections: ``method_defaults`` reach every method and every teacher (the schema's promise)."""

from __future__ import annotations

import re

import pytest

from opd.config import ConfigError, load_config
from opd.training.loop import resolve_method


def test_method_defaults_reach_teachers_and_runs_and_yield_to_their_own_keys() -> None:
    cfg = load_config("mini")
    defaults = cfg["method_defaults"]
    assert defaults == {"ema_decay": 0.8, "ema_every": 1}  # differ from the dataclass's 0.9 / 8
    for run in ["opd", "multitask_nft", *(f"teacher_{task}" for task in cfg["tasks"])]:
        _, method_cfg, section = resolve_method(cfg, run)
        assert (method_cfg.ema_decay, method_cfg.ema_every) == (0.8, 1), run
        assert section["ema_decay"] == 0.8
    # A teacher's own setting wins over the default; the default still fills the rest.
    cfg["tasks"]["text"]["teacher"]["ema_decay"] = 0.5
    _, method_cfg, _ = resolve_method(cfg, "teacher_text")
    assert (method_cfg.ema_decay, method_cfg.ema_every) == (0.5, 1)


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ("tasks.text.teacher.ema_decy=0.5", "tasks.text.teacher"),  # a misspelt key
        ("tasks.text.teacher.lr=fast", "tasks.text.teacher.lr"),  # an ill-typed value
        ("method_defaults.no_such_field=1", "methods."),  # a default that no method has
    ],
)
def test_a_bad_teacher_or_default_key_fails_at_config_time(override: str, where: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(where)):
        load_config("mini", set_items=[override])


def test_a_teachers_guidance_is_also_its_evaluation_guidance() -> None:
    cfg = load_config("mini")
    cfg["tasks"]["text"]["teacher"]["guidance"] = 3.5
    _, method_cfg, _ = resolve_method(cfg, "teacher_text")
    assert (method_cfg.guidance, method_cfg.eval_guidance, method_cfg.tasks) == (3.5, 3.5, ["text"])


def test_a_teacher_is_distilled_at_the_guidance_it_trained_with(monkeypatch) -> None:
    """Without ``guidance`` a GRPO-Guard teacher trains at the profile's sampling CFG and an NFT
    teacher at NFT's own 1.0; the distillation context queries each at that scale (it used to
    read 1.0 for any teacher without the key). An explicit value wins."""
    from opd.training import context
    from opd.training.base import run_guidance
    from opd.training.compute import ComputeCounter

    cfg = load_config("mini")
    cfg["sampling"]["guidance"] = 3.25  # neither 1.0 nor the teachers' written 4.5
    teachers = {t: cfg["tasks"][t]["teacher"] for t in ("composition", "text", "aesthetics")}
    teachers["text"] = cfg["tasks"]["text"]["teacher"] = {  # a CFG teacher
        "method": "grpo_guard",
        "guidance": 4.5,
        "noise_level": 0.3,
    }
    assert teachers["composition"]["method"] == "nft"
    del teachers["composition"]["guidance"], teachers["text"]["guidance"]
    teachers["aesthetics"]["guidance"] = 2.0
    expected = {"composition": 1.0, "text": 3.25, "aesthetics": 2.0}
    assert {t: run_guidance(cfg, f"teacher_{t}") for t in expected} == expected
    monkeypatch.setattr(context, "load_prompts", lambda *args, **kwargs: ([], []))
    monkeypatch.setattr(context, "make_reward", lambda *args, **kwargs: None)
    ctx = context.build_context(cfg, 0, ComputeCounter(), {}, model=object())
    assert {t: ctx.tasks[t].teacher_guidance for t in expected} == expected


def test_reporting_names_every_run_by_the_config_resolver() -> None:
    """``opd.reporting.collect.method_of`` reads ``method_section`` (teachers included), with
    its own names only for rows that no run section describes."""
    from opd.config import method_section
    from opd.reporting.collect import method_of

    cfg = load_config("mini")
    runs = [*cfg["methods"], *(f"teacher_{task}" for task in cfg["tasks"])]
    assert {run: method_of(run, cfg) for run in runs} == {
        run: method_section(cfg, run)[0] for run in runs
    }
    assert method_of("teacher_text", cfg) == cfg["tasks"]["text"]["teacher"]["method"]
    assert method_of("base_cfg", cfg) == "base"
    assert method_of("no_such_run", cfg) == "no_such_run"


def test_run_seeds_give_a_run_its_own_training_seeds() -> None:
    """``run_seeds`` replaces ``seeds`` / ``ablation_seeds`` for the runs it names; a name that
    is no run of Table 1 or the ablations stops validation, naming the key."""
    from opd.config import ConfigError, run_seeds, validate_config

    cfg = load_config("mini")
    cfg["seeds"], cfg["ablation_seeds"] = [0, 1, 2], [5]
    cfg["run_seeds"] = {"weighted_sum_rl": [0], "opd_ppo": [3, 4]}
    validate_config(cfg)
    seeds = run_seeds(cfg)
    assert seeds["weighted_sum_rl"] == [0] and seeds["opd"] == [0, 1, 2]
    assert seeds["opd_ppo"] == [3, 4] and seeds["sft_distill"] == [5]
    assert set(seeds) == {*cfg["table1"], *cfg["ablations"]}
    cfg["run_seeds"] = {"no_such_run": [0]}
    with pytest.raises(ConfigError, match=r"run_seeds\.no_such_run"):
        validate_config(cfg)
