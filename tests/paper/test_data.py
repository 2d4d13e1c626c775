"""Paper prompt sets (opd.data): fetched over HTTP from a local server, cached, checked against
pinned or first-use SHA-256 digests, parsed (lines, GenEval jsonl), counted; published LoRA
teachers fetched as peft folders."""

from __future__ import annotations

import hashlib
import json
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
    ]
    with pytest.raises(FileNotFoundError, match="no peft adapter"):
        D.fetch_adapter(tmp_path / "out" / "..", tmp_path / "empty")
