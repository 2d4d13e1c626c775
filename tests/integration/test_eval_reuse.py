"""A checkpoint whose adapter is the identity (each run's step 0) reuses the base model's
evaluation rows: the reused rows equal those of sampling and scoring it again, exactly."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from opd import evaluation
from opd.evaluation import adapter_is_identity, base_rows_at, evaluate_base, evaluate_run
from opd.training.loop import train_run

RUN = "teacher_text"  # trained with CFG 4.5, evaluated at the profile's CFG: the base_cfg rows


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_identity_is_plain_lora_with_every_b_zero() -> None:
    a, b = "blocks.0.to_q.lora_A.weight", "blocks.0.to_q.lora_B.weight"
    zero = {a: torch.randn(4, 8), b: torch.zeros(8, 4)}
    assert adapter_is_identity(zero)
    assert not adapter_is_identity(
        {a: zero[a], b: torch.zeros(8, 4).index_fill_(0, torch.tensor([3]), 1e-30)}
    )
    assert not adapter_is_identity({**zero, "blocks.0.to_q.lora_magnitude_vector": torch.ones(8)})
    assert not adapter_is_identity({})


def test_step_zero_reuses_the_base_rows_bit_for_bit(smoke_stage1, tmp_path, monkeypatch):
    cfg = smoke_stage1
    run_dir = tmp_path / RUN
    train_run(cfg, RUN, 0, run_dir, progress=False, max_steps=1)  # checkpoints 0 and 1
    base_csv = evaluate_base(cfg, tmp_path / "base.csv")
    assert base_rows_at(cfg, base_csv, 2.0) is None  # neither of the base model's CFG scales

    sampled = evaluate_run(cfg, run_dir, RUN, 0, tmp_path / "sampled.csv", progress=False)
    calls = []
    original = evaluation.Evaluator.evaluate

    def counting(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(evaluation.Evaluator, "evaluate", counting)
    reused = evaluate_run(
        cfg, run_dir, RUN, 0, tmp_path / "reused.csv", progress=False, base_eval=base_csv
    )
    assert len(calls) == 1  # step 1 only: step 0 came from the base evaluation
    a, b = _rows(sampled), _rows(reused)
    assert [r["step"] for r in a] == [r["step"] for r in b] and {r["step"] for r in a} == {"0", "1"}
    assert a == b
    step0 = [r for r in b if r["step"] == "0"]
    base_cfg = [r for r in _rows(base_csv) if r["run"] == "base_cfg"]
    key = ("column", "task", "eval_seed", "value", "n")
    assert [[r[k] for k in key] for r in step0] == [[r[k] for k in key] for r in base_cfg]


def test_a_damaged_base_eval_is_refused(smoke_stage1, tmp_path):
    base_csv = evaluate_base(smoke_stage1, tmp_path / "base.csv")
    base_csv.write_text(base_csv.read_text().replace("base_cfg", "base_cfx", 1))
    with pytest.raises(evaluation.EvalIntegrityError):
        base_rows_at(smoke_stage1, base_csv, float(smoke_stage1["eval"]["guidance"]))


def test_images_per_prompt_draws_each_copy_from_its_own_noise(smoke_stage1):
    from opd.evaluation import Evaluator, column_value
    from opd.training.context import load_base_model

    cfg = {**smoke_stage1, "eval": {**smoke_stage1["eval"], "images_per_prompt": 2}}
    model = load_base_model(cfg)
    one = Evaluator(model, smoke_stage1)
    two = Evaluator(model, cfg)
    task = next(iter(two.prompts))
    n = len(one.prompts[task][0])
    assert two.prompts[task][0] == [p for p in one.prompts[task][0] for _ in range(2)]
    images = two.generate(task, None, 1.0)[0]
    assert images.shape[0] == 2 * n
    assert all(not (images[2 * i] == images[2 * i + 1]).all() for i in range(n))
    rows, _ = two.evaluate(None, 1.0)
    first = [r for r in rows if r["task"] == task and r["eval_seed"] == two.seeds[0]]
    assert first and all(r["n"] == 2 * n for r in first)
    column = first[0]["column"]
    scores = two.scorers[column](images, *two.prompts[task])
    assert first[0]["value"] == column_value(two.scorers[column], scores, two.prompts[task][1])


def test_final_and_intermediate_checkpoints_use_their_own_images_per_prompt(smoke_stage1, tmp_path):
    """``eval.images_per_prompt`` (here per task) sizes the last checkpoint's evaluation and
    ``eval.intermediate_images_per_prompt`` the others'; a task the mapping omits gets 1."""
    from opd.evaluation import images_per_prompt

    ev = {"images_per_prompt": {"text": 3}, "intermediate_images_per_prompt": 1}
    ev["intermediate_prompts_per_task"] = 2
    cfg = {**smoke_stage1, "eval": {**smoke_stage1["eval"], **ev}}
    assert [images_per_prompt(ev, t, f) for t in ("text", "aesthetics") for f in (1, 0)] == [
        3,
        1,
        1,
        1,
    ]
    run_dir = tmp_path / RUN
    train_run(cfg, RUN, 0, run_dir, progress=False, max_steps=1)  # checkpoints 0 and 1
    rows = _rows(evaluate_run(cfg, run_dir, RUN, 0, tmp_path / "e.csv", progress=False))
    n = {(r["step"], r["task"]) for r in rows}
    sizes = {(r["step"], r["task"]): int(r["n"]) for r in rows}
    prompts = int(cfg["eval"]["prompts_per_task"])
    assert n and all(sizes["0", t] == 2 for _, t in n)  # intermediate: 2 prompts, one image
    assert sizes["1", "text"] == 3 * prompts
    assert all(sizes["1", t] == prompts for _, t in n if t != "text")
    # the intermediate prompts are the first of the final checkpoint's
    from opd.evaluation import Evaluator
    from opd.training.context import load_base_model

    evaluator = Evaluator(load_base_model(cfg), cfg)
    for (task, final), (p, _) in evaluator.sets.items():
        if not final:
            once = evaluator.sets[task, True][0][:: images_per_prompt(ev, task)]
            assert len(p) == 2 and p == once[:2]
