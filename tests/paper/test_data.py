"""Paper prompt sets (opd.data): fetched over HTTP from a local server, cached, checked against
pinned or first-use SHA-256 digests, parsed (lines, GenEval jsonl), counted; published LoRA
teachers fetched as peft folders, from a folder or, offline, from the huggingface_hub cache at a
revision and subfolder."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from opd import data as D
from tests.paper.conftest import reply

GENEVAL_LINES = [
    {
        "tag": "single_object",
        "include": [{"class": "bench", "count": 1}],
        "prompt": "a photo of a bench",
    },
    {
        "tag": "counting",
        "include": [{"class": "cat", "count": 2}],
        "exclude": [{"class": "cat", "count": 3}],
        "prompt": "a photo of two cats",
    },
]
OCR_TEXT = 'A sign that reads "Open Late"\n\nA mug labeled "Campfire Brew"\n'


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    g = tmp_path / "src" / "evaluation_metadata.jsonl"
    g.parent.mkdir()
    g.write_text("\n".join(json.dumps(x) for x in GENEVAL_LINES) + "\n")
    o = tmp_path / "src" / "test.txt"
    o.write_text(OCR_TEXT)
    return {"geneval": g, "ocr": o}


def profile(tmp_path: Path, sets: dict, **extra) -> dict:
    return {"prompts": {"cache_dir": str(tmp_path / "cache"), "sets": sets, **extra}}


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_parse_formats() -> None:
    prompts, meta = D.parse_prompts(OCR_TEXT, "lines")
    assert prompts == ['A sign that reads "Open Late"', 'A mug labeled "Campfire Brew"']
    assert meta == [{"index": 0}, {"index": 1}]
    prompts, meta = D.parse_prompts("\n".join(json.dumps(x) for x in GENEVAL_LINES), "jsonl")
    assert prompts[1] == "a photo of two cats" and meta[1]["tag"] == "counting"
    with pytest.raises(D.PromptSetError, match="line 1"):
        D.parse_prompts('{"no_prompt": 1}', "jsonl")


def test_fetch_over_http_with_a_pinned_checksum_and_cache(http_server, files, tmp_path) -> None:
    body = files["geneval"].read_bytes()
    hits = []

    def get(h):
        hits.append(h.path)
        reply(h, 200, body, "application/octet-stream")

    url = http_server(get, get) + "/prompts/evaluation_metadata.jsonl"
    prof = profile(tmp_path, {"geneval": {"url": url, "sha256": sha(files["geneval"]), "count": 2}})
    prompts, meta = D.load_prompt_set("geneval", prof)
    assert prompts == ["a photo of a bench", "a photo of two cats"]
    assert meta[0]["include"] == [{"class": "bench", "count": 1}]
    D.load_prompt_set("geneval", prof)
    assert hits == ["/prompts/evaluation_metadata.jsonl"]  # the second read uses the cache
    assert (tmp_path / "cache" / "geneval" / "evaluation_metadata.jsonl").is_file()


def test_checksum_mismatch_and_count_are_refused(files, tmp_path) -> None:
    prof = profile(tmp_path, {"ocr_test": {"url": str(files["ocr"]), "sha256": "0" * 64}})
    with pytest.raises(D.ChecksumError, match="does not match the pinned"):
        D.load_prompt_set("ocr_test", prof)
    prof = profile(tmp_path, {"ocr_test": {"url": str(files["ocr"]), "count": 1018}})
    with (
        pytest.warns(UserWarning),
        pytest.raises(D.PromptSetError, match="2 prompts, expected 1018"),
    ):
        D.load_prompt_set("ocr_test", prof)


def test_unpinned_files_are_recorded_on_first_use(files, tmp_path) -> None:
    url = files["ocr"].as_uri()  # file:// URLs are fetched like http ones
    prof = profile(tmp_path, {"ocr_test": {"url": url}})
    with pytest.warns(UserWarning, match="not pinned"):
        prompts, _ = D.load_prompt_set("ocr_test", prof)
    assert len(prompts) == 2
    lock = json.loads((tmp_path / "cache" / D.LOCK_NAME).read_text())
    assert lock == {url: sha(files["ocr"])}
    cached = tmp_path / "cache" / "ocr_test" / "test.txt"
    cached.write_text(OCR_TEXT + "An extra prompt\n")  # the cached file changes
    with pytest.raises(D.ChecksumError, match="recorded on first use"):
        D.load_prompt_set("ocr_test", prof)
    strict = profile(tmp_path / "s", {"ocr_test": {"url": url}}, require_checksums=True)
    with pytest.raises(D.ChecksumError, match="no SHA-256 pinned"):
        D.load_prompt_set("ocr_test", strict)


def test_task_sections_and_builtin_sets(files, tmp_path) -> None:
    prof = profile(
        tmp_path,
        {
            "geneval_train": {"url": str(files["geneval"]), "sha256": sha(files["geneval"])},
            "geneval": {"url": str(files["geneval"]), "sha256": sha(files["geneval"]), "count": 2},
        },
    )
    source = {"source": "paper", "train": "geneval_train", "test": "geneval"}
    assert D.load_prompt_file(source, "test", prof)[0][0] == "a photo of a bench"
    assert len(D.load_prompt_file(source, "train", prof)[0]) == 2
    with pytest.raises(KeyError, match="unknown prompt set"):
        D.prompt_set_spec("nope", prof)
    builtin = D.prompt_set_spec("ocr_test")
    assert builtin["url"].startswith("https://") and builtin["format"] == "lines"
    assert D.prompt_set_spec("geneval")["count"] == 553


def test_fetch_adapter_from_a_folder(tmp_path: Path) -> None:
    src = tmp_path / "lora"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    (src / "adapter_model.safetensors").write_bytes(b"x")
    (src / "README.md").write_text("model card")
    out = D.fetch_adapter(src, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        D.SOURCE_NAME,
    ]
    assert json.loads((out / D.SOURCE_NAME).read_text())["commit"] is None
    with pytest.raises(FileNotFoundError, match="no peft adapter"):
        D.fetch_adapter(tmp_path / "out" / "..", tmp_path / "empty")


# ------------------------------------------------------------------ the huggingface_hub cache
def hub_cache_repo(
    cache: Path, repo_id: str, files: Mapping[str, Path], ref: str | None = "main"
) -> str:
    """Save ``files`` (path in the repository -> local file) as one commit of ``repo_id`` in the
    huggingface_hub cache layout (``models--owner--name/blobs/<sha256>``, ``snapshots/<commit>/
    <path>`` linked to its blob, ``refs/<ref>`` holding the commit); returns the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    listing = hashlib.sha1()
    blobs = {}
    for path, src in sorted(files.items()):
        data = Path(src).read_bytes()
        blobs[path] = hashlib.sha256(data).hexdigest()
        listing.update(f"{path}\0{blobs[path]}\0".encode())
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "blobs" / blobs[path]).write_bytes(data)
    commit = listing.hexdigest()
    for path, blob in blobs.items():
        link = repo / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / blob, link.parent))
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return commit


def folder_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    """Every file under ``folder`` as repository path (under ``prefix``) -> file."""
    return {
        f"{prefix}{p.relative_to(folder).as_posix()}": p
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def offline_env(hf_home: Path) -> dict[str, str]:
    """This environment with the hub offline and its cache under ``hf_home``."""
    return {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_OFFLINE": "1",
    }


def _lora_files(root: Path, text: str) -> dict[str, Path]:
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text(json.dumps({"r": 2, "note": text}))
    (root / "adapter_model.safetensors").write_bytes(text.encode())
    (root / "README.md").write_text("not fetched")
    return folder_files(root)


def test_fetch_adapter_offline_from_the_hub_cache_at_a_revision_and_subfolder(
    tmp_path: Path,
) -> None:
    hub = tmp_path / "hf" / "hub"
    old = {f"OCRTeacher/lora/{k}": v for k, v in _lora_files(tmp_path / "old", "old").items()}
    new = {f"OCRTeacher/lora/{k}": v for k, v in _lora_files(tmp_path / "new", "new").items()}
    new |= {f"Student/lora/{k}": v for k, v in _lora_files(tmp_path / "st", "student").items()}
    first = hub_cache_repo(hub, "standin/opd", old, ref=None)
    main = hub_cache_repo(hub, "standin/opd", new)
    assert first != main

    def fetch(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "opd.data", "adapter", "standin/opd", *args]
        env = offline_env(tmp_path / "hf")
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)

    for revision, subfolder, want, commit in (
        (first, "OCRTeacher/lora", "old", first),
        ("main", "OCRTeacher/lora", "new", main),
        ("main", "Student/lora", "student", main),
    ):
        out = tmp_path / f"out-{revision[:6]}-{subfolder.split('/')[0]}"
        done = fetch("--revision", revision, "--subfolder", subfolder, "--out", str(out))
        assert done.returncode == 0, done.stderr
        assert (out / "adapter_model.safetensors").read_text() == want
        assert not (out / "README.md").exists()  # only the adapter's files
        source = json.loads((out / D.SOURCE_NAME).read_text())
        assert source == {
            "source": "standin/opd",
            "subfolder": subfolder,
            "revision": revision,
            "commit": commit,
        }
    missing = fetch("--subfolder", "AesTeacher/lora", "--out", str(tmp_path / "none"))
    assert missing.returncode != 0 and "AesTeacher/lora" in missing.stderr
