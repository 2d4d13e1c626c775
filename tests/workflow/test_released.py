"""The released-model target: the paper profile's DAG (every published adapter and the base
evaluated on one GPU each, with the scorers' images on each evaluation's command line), and a
real run at smoke scale on locally built stand-ins (a tiny SD3-shaped base and three LoRAs)
saved in the huggingface_hub cache layout and loaded with ``HF_HUB_OFFLINE=1``, so that the hub
loading path (revision, subfolder) runs; the table it writes is checked cell by cell.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from opd.config import load_config
from opd.released import adapters
from tests.paper.test_data import folder_files, hub_cache_repo, offline_env
from tests.paper.test_profile import peft_lora
from tests.workflow.test_dag import CONFIG, job_stats, snakemake
from tests.workflow.test_paper_dag import by_rule, fake_apptainer, gpus, ok_file, parse_jobs

# every test starts Snakemake: not in the fast run
pytestmark = pytest.mark.slow

SERVICE_IMAGES = {
    "geneval": "docker://opd-geneval:latest",
    "hpsv21": "docker://opd-scorers:latest",
    "imagereward": "docker://opd-scorers:latest",
}


def test_paper_dry_run_lists_every_released_evaluation_with_gpus_and_scorer_images(
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    args = ["-n", "released", "--sdm", "apptainer", "--config", "profile=paper"]
    rc, out = snakemake(work, *args, env=fake_apptainer(tmp_path))
    assert rc == 0, out
    cfg = load_config("paper")
    names = list(adapters(cfg))
    jobs = by_rule(parse_jobs(out))
    assert {j["wildcards"]["adapter"] for j in jobs["evaluate_released"]} == set(names)
    assert {j["wildcards"]["adapter"] for j in jobs["fetch_released"]} == set(names)
    gates = {ok_file(cfg, s["scorer"]) for s in cfg["benchmarks"].values()}
    (base,) = jobs["evaluate_released_base"]
    for job in [*jobs["evaluate_released"], base]:
        assert gpus(job) == 1, job  # one GPU per evaluation (resources.eval_gpu)
        assert gates | {"results/paper/prompts.ok"} <= set(job["input"]), job
        for name, image in SERVICE_IMAGES.items():
            assert f"--scorer-image {name}={image}" in job["shell"], job
        for name in ("ocr", "pickscore", "clipscore", "aesthetic"):  # in the job's own image
            assert f"--scorer-image {name}=docker://opd-train:latest" in job["shell"], job
    assert "--released-base" in base["shell"]
    for job in jobs["evaluate_released"]:
        name = job["wildcards"]["adapter"]
        assert f"--released {name} --adapter results/paper/released/{name}/adapter" in job["shell"]
        assert f"results/paper/released/{name}/DONE" in job["input"]
    fetch = {j["wildcards"]["adapter"]: j for j in jobs["fetch_released"]}
    assert all(gpus(j) == 0 for j in fetch.values())
    assert (
        "quanhaol/DiffusionOPD --subfolder Student/lora --revision main"
        in (fetch["opd_student"]["shell"])
    )
    assert "jieliu/SD3.5M-FlowGRPO-Text --revision main --out" in fetch["flowgrpo_text"]["shell"]
    (table,) = jobs["released_table"]
    for name in names:
        assert f"--eval {name}=results/paper/released/{name}/eval.csv" in table["shell"]
    assert not {"train_run", "train_teacher", "evaluate_run"} & set(jobs)  # evaluation only
    assert "Singularity image docker://opd-train:latest will be pulled." in out
    assert job_stats(out)["evaluate_released"] == len(names)


# ------------------------------------------------------------------ a real run, smoke scale
def _stand_ins(tmp_path: Path) -> dict[str, str]:
    """The base and three adapters in a huggingface_hub cache; returns the commits."""
    from opd.models import build_tiny_sd3_pipeline_dir

    hub = tmp_path / "hf" / "hub"
    pipe = build_tiny_sd3_pipeline_dir(tmp_path / "pipe", resolution=16)
    commits = {"base": hub_cache_repo(hub, "standin/tiny-sd3", folder_files(pipe))}
    loras = {seed: peft_lora(pipe, tmp_path / f"lora{seed}", seed=seed) for seed in (5, 6, 7, 8)}
    old = folder_files(loras[5], "OCRTeacher/lora/") | folder_files(loras[6], "Student/lora/")
    new = folder_files(loras[7], "OCRTeacher/lora/") | folder_files(loras[8], "Student/lora/")
    commits["opd_old"] = hub_cache_repo(hub, "standin/DiffusionOPD", old, ref=None)
    commits["opd_main"] = hub_cache_repo(hub, "standin/DiffusionOPD", new)
    lora9 = peft_lora(pipe, tmp_path / "lora9", seed=9)
    commits["text"] = hub_cache_repo(hub, "standin/FlowGRPO-Text", folder_files(lora9))
    return commits


def _overrides(commits: dict[str, str]) -> dict:
    ours = {  # the smoke protocol that runs: 4 prompts per task, 2 seeds, 3 steps, 16 px
        "prompts": {t: {"set": f"mini:{t}", "count": 4} for t in ("composition", "aesthetics")},
        "images_per_prompt": 2,
        "steps": 3,
        "guidance": 4.5,
        "resolution": 16,
    }
    return {
        "model": {"sd3": {"max_sequence_length": 16}},
        "progress": False,
        "released": {
            "base": {
                "hub": "standin/tiny-sd3",
                "revision": "main",
                "label": "tiny",
                "reported": {
                    "nocfg": {"source": "P0", "protocol": {"note": "none"}, "values": {"pick": 0.1}}
                },
            },
            "adapters": [
                {
                    "name": "opd_student",
                    "hub": "standin/DiffusionOPD",
                    "subfolder": "Student/lora",
                    "revision": "main",
                    "guidance": 4.5,
                    "reported": {"source": "P1", "protocol": ours, "values": {"pick": 0.5}},
                },
                {
                    "name": "opd_ocr_teacher",
                    "hub": "standin/DiffusionOPD",
                    "subfolder": "OCRTeacher/lora",
                    "revision": commits["opd_old"],  # pinned to the older commit
                    "guidance": 4.5,
                    "reported": {
                        "source": "P2",
                        "protocol": {**ours, "steps": 40},
                        "values": {"text": 0.9, "pick": 0.4},
                    },
                },
                {
                    "name": "grpo_text",
                    "hub": "standin/FlowGRPO-Text",
                    "subfolder": None,
                    "revision": "main",
                    "guidance": 1.0,
                    "reported": None,
                },
            ],
        },
    }


def test_released_target_runs_on_hub_cached_stand_ins_offline(tmp_path: Path) -> None:
    commits = _stand_ins(tmp_path)
    extra = tmp_path / "released.yaml"
    extra.write_text(yaml.safe_dump(_overrides(commits)))
    work = tmp_path / "work"
    work.mkdir()
    env = offline_env(tmp_path / "hf")
    args = ["--cores", "2", "released", "--configfile", str(CONFIG), str(extra)]
    rc, out = snakemake(work, *args, "--config", "profile=smoke", env=env, timeout=900)
    assert rc == 0, out
    assert "pretrain_base" not in out  # the released base is the hub's, not the world's

    released = work / "results/smoke/released"
    pinned = released / "opd_ocr_teacher/adapter/adapter_model.safetensors"
    assert pinned.read_bytes() == (tmp_path / "lora5/adapter_model.safetensors").read_bytes()
    table = pd.read_csv(work / "results/smoke/tables/released.csv")
    cfg = load_config("smoke")
    models = ["base_nocfg", "base_cfg", "opd_student", "opd_ocr_teacher", "grpo_text"]
    assert len(table) == len(models) * len(cfg["benchmarks"])  # one row per model x benchmark
    assert set(zip(table["model"], table["benchmark"], strict=True)) == {
        (m, b) for m in models for b in cfg["benchmarks"]
    }
    cell = table.set_index(["model", "benchmark"])
    evals = pd.read_csv(released / "opd_student/eval.csv")
    pick = evals[evals["column"] == "pick"].groupby("eval_seed")["value"].mean()
    student = cell.loc[("opd_student", "pick")]
    assert int(student["n_seeds"]) == 2
    six = {"rel": 1e-5}  # the CSV keeps 6 significant digits
    assert float(student["ours"]) == pytest.approx(pick.mean(), **six)
    assert float(student["se"]) == pytest.approx(pick.std(ddof=1) / math.sqrt(2), **six)
    assert float(student["se"]) > 0
    diff = (pick.mean() - 0.5) / float(student["se"])  # protocols match: difference in SEs
    assert float(student["diff_se"]) == pytest.approx(diff, **six)
    assert student["comparison"] == f"{diff:+.1f} SE"
    protocol = "mini:aesthetics x4, 2 img/prompt, 3 steps, CFG 4.5, 16 px"
    assert student["reported_protocol"] == student["our_protocol"] == protocol
    assert student["commit"] == commits["opd_main"]
    assert cell.loc[("base_cfg", "pick")]["commit"] == commits["base"]
    teacher = cell.loc[("opd_ocr_teacher", "text")]
    assert teacher["comparison"] == "protocol differs" and teacher["reported_protocol"]
    assert teacher["commit"] == commits["opd_old"]
    assert cell.loc[("opd_ocr_teacher", "pick")]["comparison"] == "protocol differs"
    assert set(cell.loc["grpo_text"]["comparison"]) == {"not reported"}
    assert set(cell.loc["grpo_text"]["guidance"]) == {1.0}
    assert cell.loc[("base_nocfg", "pick")]["comparison"] == "protocol not stated"
    assert cell.loc[("base_cfg", "pick")]["comparison"] == "not reported"
    assert set(table["scorer"]) == {"in-process"}
    # the adapters were really applied: the student's images score differently from the base's
    assert float(student["ours"]) != pytest.approx(float(cell.loc[("base_cfg", "pick")]["ours"]))
    md = (work / "results/smoke/tables/released.md").read_text()
    assert f"standin/DiffusionOPD / OCRTeacher/lora at {commits['opd_old']}" in md
    assert "Source: P2" in md and "protocol differs" in md
