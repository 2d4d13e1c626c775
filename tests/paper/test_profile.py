"""The paper profile: its settings are the paper's, every run and teacher resolves, its stage 1
distils the authors' published teachers (training them an option), and the paper's training
path runs end to end on a tiny SD3-shaped pipeline built locally (hub ids replaced by local
folders, prompt sets by local files, teachers by peft LoRA folders)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from opd.config import REPO_ROOT, load_config
from opd.models import DEFAULT_TARGETS
from opd.registry import SCORERS
from opd.released import adapters, downloaded_teacher_hours
from opd.rewards.paper import PAPER_SCORERS

ACCEL = REPO_ROOT / "config" / "accelerate"


@pytest.fixture(scope="module")
def paper() -> dict:
    return load_config("paper")


def test_paper_settings(paper: dict) -> None:
    assert paper["model"]["kind"] == "sd3" and paper["device"] == "cuda"
    assert paper["paths"]["base"] == "stabilityai/stable-diffusion-3.5-medium"
    assert paper["model"]["sd3"]["resolution"] == 512
    lora = paper["model"]["lora"]
    assert (lora["rank"], lora["alpha"]) == (32, 64)
    assert set(lora["targets"]) == set(DEFAULT_TARGETS)  # incl. the added text projections
    assert paper["sampling"] == {"num_steps": 10, "shift": 3.0, "guidance": 4.5}
    assert paper["eval"]["num_steps"] == 40 and paper["eval"]["guidance"] == 4.5
    assert len(paper["eval"]["seeds"]) == 4  # GenEval: 4 images per prompt
    opd = paper["methods"]["opd"]
    assert (opd["lr"], opd["weight_decay"], opd["grad_clip"]) == (3e-4, 1e-4, 1.0)
    assert (opd["ema_decay"], opd["ema_every"]) == (0.9, 8)
    teachers = {t: s["teacher"] for t, s in paper["tasks"].items()}
    assert teachers["composition"]["method"] == "nft" and teachers["composition"]["guidance"] == 1.0
    assert {teachers["text"]["guidance"], teachers["aesthetics"]["guidance"]} == {4.5}
    assert teachers["text"]["method"] == teachers["aesthetics"]["method"] == "grpo_guard"
    assert paper["table1"] == load_config("mini")["table1"]


def test_columns_and_rewards_are_registered_scorers(paper: dict) -> None:
    assert list(paper["benchmarks"]) == list(PAPER_SCORERS)
    assert [b["scorer"] for b in paper["benchmarks"].values()] == list(PAPER_SCORERS)
    for name in PAPER_SCORERS:
        SCORERS.get(name)
    assert paper["tasks"]["composition"]["reward"] == {"geneval": 1.0}
    assert paper["tasks"]["text"]["reward"] == {"ocr": 1.0}
    assert set(paper["tasks"]["aesthetics"]["reward"]) == {"pickscore", "clipscore", "hpsv21"}
    opts = paper["scorer_options"]
    assert set(opts) == set(PAPER_SCORERS)
    for name in ("pickscore", "clipscore", "aesthetic"):  # model ids pinned, device chosen
        assert "/" in opts[name]["model"] and opts[name]["device"] == "cuda"
    assert opts["aesthetic"]["sha256"] and opts["unifiedreward"]["model_id"]
    for name in ("geneval", "hpsv21", "imagereward"):  # services on loopback
        assert (
            opts[name]["url"].startswith("http://127.0.0.1:")
            and "checkpoint" in opts[name]["local"]
        )


def test_every_run_and_teacher_resolves(paper: dict) -> None:
    from opd.training.loop import resolve_method

    gpus = yaml.safe_load((ACCEL / "multi_gpu.yaml").read_text())["num_processes"]
    assert paper["resources"]["gpu"] == gpus
    for run in [*paper["methods"], *(f"teacher_{t}" for t in paper["tasks"])]:
        _, cfg, _ = resolve_method(paper, run)
        assert cfg.prompts_per_task % gpus == 0, run  # whole prompt groups per process
    _, cfg, _ = resolve_method(paper, "opd")
    assert cfg.prompts_per_task * len(paper["tasks"]) == 72  # 3 per GPU x 8 GPUs x 3 tasks
    _, cascade, _ = resolve_method(paper, "cascade_nft")
    assert [s["steps"] for s in cascade.schedule] == [800, 300, 200, 200, 100]


def test_a_published_teacher_is_a_config_choice() -> None:
    from opd.training.loop import resolve_method

    hub = "jieliu/SD3.5M-FlowGRPO-GenEval"
    over = {"tasks": {"composition": {"teacher": {"pretrained": hub, "guidance": 4.5}}}}
    cfg = load_config("paper", overrides=over)
    assert cfg["tasks"]["composition"]["teacher"]["pretrained"] == hub
    _, method_cfg, section = resolve_method(cfg, "teacher_composition")
    assert "pretrained" not in section and method_cfg.eval_guidance == 4.5


def test_the_paper_profile_distils_its_authors_published_teachers() -> None:
    paper = load_config("paper")
    entries = adapters(paper)
    assert {e["hub"] for e in entries.values()} >= {
        "quanhaol/DiffusionOPD",
        "jieliu/SD3.5M-FlowGRPO-GenEval",
        "worstcoder/SD3.5M-DiffusionNFT-MultiReward",
    }
    opd = {e["subfolder"] for e in entries.values() if e["hub"] == "quanhaol/DiffusionOPD"}
    assert opd == {"Student/lora", "GenEvalTeacher/lora", "OCRTeacher/lora", "AesTeacher/lora"}
    teachers = {t: s["teacher"]["pretrained"]["released"] for t, s in paper["tasks"].items()}
    assert teachers == {
        "composition": "opd_geneval_teacher",
        "text": "opd_ocr_teacher",
        "aesthetics": "opd_aes_teacher",
    }
    for task, name in teachers.items():  # queried at the CFG its entry was trained for
        assert paper["tasks"][task]["teacher"]["guidance"] == entries[name]["guidance"]
    assert downloaded_teacher_hours(paper) == {
        "composition": 46.92,
        "text": 33.17,
        "aesthetics": 85.75,
    }
    for entry in entries.values():  # every reported number carries its source
        if entry["reported"] is not None:
            assert entry["reported"]["source"].strip() and entry["reported"]["values"]
    trained = load_config(
        "paper", overrides={"tasks": {"text": {"teacher": {"pretrained": None}}}}
    )  # training a teacher stays an option
    assert set(downloaded_teacher_hours(trained)) == {"composition", "aesthetics"}


def test_accelerate_configs() -> None:
    want = {"single_gpu": 1, "multi_gpu": 8, "multi_node": 16, "fsdp": 8, "cpu2": 2}
    for name, procs in want.items():
        cfg = yaml.safe_load((ACCEL / f"{name}.yaml").read_text())
        assert cfg["num_processes"] == procs and cfg["compute_environment"] == "LOCAL_MACHINE"
    assert yaml.safe_load((ACCEL / "fsdp.yaml").read_text())["distributed_type"] == "FSDP"
    assert yaml.safe_load((ACCEL / "multi_node.yaml").read_text())["num_machines"] == 2


# ----------------------------------------------------------------------------- end to end
def peft_lora(pipe_dir: Path, out: Path, seed: int = 3) -> Path:
    """A LoRA saved by peft itself (the layout of the public Flow-GRPO teachers), its B factors
    drawn from ``seed``."""
    import torch
    from diffusers import SD3Transformer2DModel
    from peft import LoraConfig, get_peft_model

    tr = SD3Transformer2DModel.from_pretrained(pipe_dir / "transformer")
    cfg = LoraConfig(r=32, lora_alpha=64, target_modules=list(DEFAULT_TARGETS))
    model = get_peft_model(tr, cfg)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    model.save_pretrained(out)
    return out


def test_paper_profile_trains_opd_on_a_tiny_sd3(tmp_path: Path) -> None:
    import torch

    from opd.data import fetch_adapter
    from opd.models import FlowModel, build_tiny_sd3_pipeline_dir
    from opd.training.loop import train_run

    pipe = build_tiny_sd3_pipeline_dir(tmp_path / "sd3", resolution=16)
    src = tmp_path / "prompts"
    src.mkdir()
    (src / "geneval.jsonl").write_text(
        json.dumps({"tag": "single_object", "include": [{"class": "cat", "count": 1}],
                    "prompt": "a photo of a cat"}) + "\n"
    )  # fmt: skip
    (src / "ocr.txt").write_text('a sign that says "hello"\n')
    (src / "pick.txt").write_text("a red cat\na blue dog\n")
    sets = {
        "geneval_train": "geneval.jsonl", "geneval": "geneval.jsonl", "ocr_train": "ocr.txt",
        "ocr_test": "ocr.txt", "pickscore_train": "pick.txt", "drawbench": "pick.txt",
    }  # fmt: skip
    cfg = load_config(
        "paper",
        overrides={
            "device": "cpu",
            "progress": False,
            "threads": 1,
            "paths": {"base": str(pipe), "results": str(tmp_path / "results")},
            "model": {"dtype": "float32", "sd3": {"resolution": 16, "max_sequence_length": 16}},
            "prompts": {
                "cache_dir": str(tmp_path / "cache"),
                "sets": {k: {"url": str(src / v), "count": None} for k, v in sets.items()},
            },
            "methods": {"opd": {"steps": 1, "prompts_per_task": 1, "checkpoint_every": 1}},
        },
    )
    # teachers: one saved by peft (then fetched as a published LoRA would be), two by the suite
    teachers = {"composition": fetch_adapter(peft_lora(pipe, tmp_path / "pub"), tmp_path / "t0")}
    model = FlowModel.from_pretrained(pipe)
    for k, task in enumerate(("text", "aesthetics")):
        model.add_adapter(f"t{k}", rank=32, alpha=64, init="random", seed=10 + k)
        teachers[task] = model.save_adapter(f"t{k}", tmp_path / f"teacher_{task}")

    with pytest.warns(UserWarning, match="not pinned"):  # local prompt files: first use
        out = train_run(cfg, "opd", 0, tmp_path / "run", teachers, progress=False)

    final = json.loads((out / "final" / "adapter_config.json").read_text())
    assert (final["r"], final["lora_alpha"]) == (32, 64)
    assert set(final["target_modules"]) == set(DEFAULT_TARGETS)
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    losses = {r["task"]: float(r["value"]) for r in rows if r["metric"] == "loss"}
    assert set(losses) == {"composition", "text", "aesthetics"}
    assert all(v > 0 for v in losses.values())
    run = json.loads((out / "run.json").read_text())
    assert run["method"]["method"] == "opd"
    # the published-layout teacher changes the velocity: it was really loaded
    model.load_adapter("pub", teachers["composition"])
    x = torch.randn(model.latent_shape(1))
    emb = model.encode_prompts(["a photo of a cat"])
    with torch.no_grad():
        assert not torch.allclose(
            model.velocity(x, 0.5, emb, adapter="pub"), model.velocity(x, 0.5, emb)
        )
