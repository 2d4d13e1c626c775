"""``opd evaluate --run-dir`` on the smoke profile: a run is scored with the method and CFG of
its own ``run.json``, not with those of the config it is given."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest

from opd import evaluation
from opd.config import ConfigError, write_resolved
from opd.training.loop import train_run

RUN = "ft"
SECTION = {"steps": 1, "prompts_per_task": 2, "group_size": 2, "checkpoint_every": 1}


@pytest.fixture(scope="module")
def nft_run(smoke_stage1, tmp_path_factory) -> tuple[dict, Path]:
    """Run ``ft`` trained as NFT (CFG-free, evaluated at 1.0) under an override that the config
    later given to the evaluation does not repeat (there ``ft`` is GRPO-Guard at 4.5)."""
    trained = copy.deepcopy(smoke_stage1)
    trained["methods"][RUN] = {"method": "nft", **SECTION}
    run_dir = train_run(trained, RUN, 0, tmp_path_factory.mktemp("ft") / RUN, progress=False)
    given = copy.deepcopy(smoke_stage1)
    given["methods"][RUN] = {"method": "grpo_guard", **SECTION}
    return given, run_dir


def test_evaluate_run_dir_scores_a_run_with_its_own_method_and_cfg(
    nft_run, tmp_path, monkeypatch, capsys
) -> None:
    from opd.cli import main

    given, run_dir = nft_run
    assert evaluation.eval_guidance_of(given, RUN) == 4.5  # what the config alone would use
    config = tmp_path / "config.yaml"
    write_resolved(given, config)
    scales = []
    original = evaluation.Evaluator.evaluate

    def recording(self, adapter, guidance, keep_samples=0, final=True):
        scales.append(guidance)
        return original(self, adapter, guidance, keep_samples, final)

    monkeypatch.setattr(evaluation.Evaluator, "evaluate", recording)
    out = tmp_path / "eval.csv"
    argv = ["evaluate", "--config", str(config), "--run-dir", str(run_dir), "--run", RUN]
    assert main([*argv, "--seed", "0", "--out", str(out)]) == 0
    assert scales == [1.0, 1.0]  # checkpoints 0 and 1, at NFT's CFG-free scale
    with out.open(newline="") as fh:
        assert {r["method"] for r in csv.DictReader(fh)} == {"nft"}
    printed = capsys.readouterr().out
    assert "method nft, CFG 1.0" in printed and "method grpo_guard, CFG 4.5" in printed


def test_run_eval_settings_names_hash_changes_and_refuses_another_run(
    nft_run, tmp_path, capsys
) -> None:
    given, run_dir = nft_run
    matching = copy.deepcopy(given)
    matching["methods"][RUN] = {"method": "nft", **SECTION}
    assert evaluation.run_eval_settings(matching, run_dir, RUN, 0) == ("nft", 1.0)
    assert "hash" not in capsys.readouterr().out  # the training config: nothing to report
    matching["eval"]["prompts_per_task"] = 3  # same method and CFG, another config
    assert evaluation.run_eval_settings(matching, run_dir, RUN, 0) == ("nft", 1.0)
    assert "hash" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=f"holds run '{RUN}'"):
        evaluation.run_eval_settings(given, run_dir, "opd", 0)
    bare = tmp_path / "bare"  # a folder without run.json: the config's settings
    bare.mkdir()
    assert evaluation.run_eval_settings(given, bare, RUN, 0) == ("grpo_guard", 4.5)
    with pytest.raises(ConfigError, match=r"no run\.json"):
        evaluation.run_eval_settings(given, bare, "no_such_run", 0)
