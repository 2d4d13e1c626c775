"""The paper profile's prompt sets: fetched at run time, checked by SHA-256, cached locally.

The mini world makes its own prompts; the paper profile reads the public prompt files that the
paper and its baselines used:

===================  ===============================================  ===========================
set                  file                                             used for
===================  ===============================================  ===========================
``geneval``          GenEval ``prompts/evaluation_metadata.jsonl``    composition test (553)
``geneval_train``    Flow-GRPO ``dataset/geneval/train_metadata.jsonl``  composition training
``ocr_train``        Flow-GRPO ``dataset/ocr/train.txt``              text training
``ocr_test``         Flow-GRPO ``dataset/ocr/test.txt``               OCR test (1018 prompts)
``pickscore_train``  Flow-GRPO ``dataset/pickscore/train.txt``        aesthetics training
``pickscore_test``   Flow-GRPO ``dataset/pickscore/test.txt``         Pick-a-Pic test prompts
``drawbench``        DiffusionNFT ``dataset/drawbench/test.txt``      DrawBench (200) test
===================  ===============================================  ===========================

A task's ``prompts`` section names a set per split (``{source: paper, train: ocr_train, test:
ocr_test}``). The config's ``prompts`` section may override any set (``prompts.sets.<name>``:
``url`` -- an ``http(s)://`` or ``file://`` URL or a local path --, ``sha256``, ``format``,
``count``) and says where files are cached (``prompts.cache_dir``, default
``resources/prompts``) and whether an unpinned file is refused (``prompts.require_checksums``).

Integrity: a file with a pinned ``sha256`` is refused if its digest differs. A file without a
pin is trusted on first use: its digest is recorded in ``<cache_dir>/checksums.lock.json`` and
every later read is checked against that record (with a warning telling how to pin it); with
``require_checksums: true`` it is refused instead. ``count`` (when given) must match the number
of prompts parsed.

Formats: ``lines`` (one prompt per non-empty line; metadata ``{"index": i}``) and ``jsonl``
(one JSON object per line with a ``prompt`` key; the object is the prompt's metadata, e.g.
GenEval's ``tag`` / ``include`` / ``exclude``).

Published LoRA adapters (teachers, the ``released`` entries): :func:`fetch_adapter` copies one
into a peft folder, from a local folder or from a hub repository at a revision and subfolder
through the huggingface_hub cache (``HF_HUB_OFFLINE=1`` serves a cached snapshot), and records
where it came from (``opd_source.json``, with the commit a revision resolved to).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opd.config import load_config, load_resolved

LOCK_NAME = "checksums.lock.json"
DEFAULT_CACHE = "resources/prompts"

_FLOW_GRPO = "https://raw.githubusercontent.com/yifan123/flow_grpo/main/dataset"
_GENEVAL = "https://raw.githubusercontent.com/djghosh13/geneval/main/prompts"
_NFT = "https://raw.githubusercontent.com/NVlabs/DiffusionNFT/main/dataset"

#: Built-in prompt sets (the config's ``prompts.sets`` overrides any field).
PROMPT_SETS: dict[str, dict[str, Any]] = {
    "geneval": {
        "url": f"{_GENEVAL}/evaluation_metadata.jsonl",
        "format": "jsonl",
        "count": 553,
        "sha256": None,
    },
    "geneval_train": {
        "url": f"{_FLOW_GRPO}/geneval/train_metadata.jsonl",
        "format": "jsonl",
        "sha256": None,
    },
    "ocr_train": {"url": f"{_FLOW_GRPO}/ocr/train.txt", "format": "lines", "sha256": None},
    "ocr_test": {"url": f"{_FLOW_GRPO}/ocr/test.txt", "format": "lines", "sha256": None},
    "pickscore_train": {
        "url": f"{_FLOW_GRPO}/pickscore/train.txt",
        "format": "lines",
        "sha256": None,
    },
    "pickscore_test": {
        "url": f"{_FLOW_GRPO}/pickscore/test.txt",
        "format": "lines",
        "sha256": None,
    },
    "drawbench": {"url": f"{_NFT}/drawbench/test.txt", "format": "lines", "sha256": None},
}


class ChecksumError(RuntimeError):
    """A file whose SHA-256 differs from the pinned (or recorded) one, or an unpinned file
    where pins are required."""


class PromptSetError(ValueError):
    """A prompt file that cannot be parsed, or whose prompt count is not the expected one."""


# --------------------------------------------------------------------------------------------
# files and checksums (also used for scorer weights: opd.rewards.paper.weights)
# --------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, target: Path, timeout: float = 120.0) -> Path:
    """Download ``url`` (``http(s)://`` or ``file://``) to ``target`` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(fd)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def cached_file(source: str, cache_dir: str | os.PathLike[str], name: str | None = None) -> Path:
    """A local file for ``source``: a path as is, a URL downloaded once into ``cache_dir``."""
    if "://" not in source:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"file not found: {path}")
        return path
    base = name or urllib.parse.unquote(urllib.parse.urlparse(source).path.rsplit("/", 1)[-1])
    target = Path(cache_dir) / (base or "download")
    if not target.is_file():
        download(source, target)
    return target


def verify(
    path: str | os.PathLike[str],
    sha256: str | None,
    *,
    source: str | None = None,
    allow_unpinned: bool = True,
    lock_dir: str | os.PathLike[str] = DEFAULT_CACHE,
) -> str:
    """Check ``path`` against ``sha256``; returns its digest.

    Without a pin: refuse (:class:`ChecksumError`) unless ``allow_unpinned``, in which case the
    digest is recorded on first use in ``<lock_dir>/checksums.lock.json`` under ``source`` and
    later uses must match it (a warning says how to pin it).
    """
    digest = sha256_file(path)
    key = str(source or path)
    if sha256:
        if digest.lower() != str(sha256).lower():
            raise ChecksumError(
                f"{key}: SHA-256 {digest} does not match the pinned {sha256}; refusing it"
            )
        return digest
    if not allow_unpinned:
        raise ChecksumError(
            f"{key}: no SHA-256 pinned. After checking its provenance, pin `sha256: {digest}` "
            "in the config (or allow unpinned files to record it on first use)"
        )
    lock = Path(lock_dir) / LOCK_NAME
    records: dict[str, str] = json.loads(lock.read_text()) if lock.is_file() else {}
    known = records.get(key)
    if known is not None and known != digest:
        raise ChecksumError(
            f"{key}: SHA-256 {digest} differs from the digest recorded on first use "
            f"({known}, in {lock}); the file changed"
        )
    if known is None:
        records[key] = digest
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    warnings.warn(
        f"{key}: not pinned; SHA-256 {digest} recorded in {lock} (pin it in the config)",
        stacklevel=2,
    )
    return digest


# --------------------------------------------------------------------------------------------
# prompt sets
# --------------------------------------------------------------------------------------------
def _prompt_config(profile: dict[str, Any] | None) -> dict[str, Any]:
    return dict((profile or {}).get("prompts") or {})


def prompt_set_spec(name: str, profile: dict[str, Any] | None = None) -> dict[str, Any]:
    """The built-in spec of set ``name`` with the config's overrides."""
    overrides = dict((_prompt_config(profile).get("sets") or {}).get(name) or {})
    if name not in PROMPT_SETS and "url" not in overrides:
        known = sorted({*PROMPT_SETS, *(_prompt_config(profile).get("sets") or {})})
        raise KeyError(f"unknown prompt set {name!r}; known: {', '.join(known)}")
    spec = {"format": "lines", "sha256": None, "count": None, **PROMPT_SETS.get(name, {})}
    spec.update(overrides)
    return spec


def parse_prompts(text: str, fmt: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Prompts and metadata from a file's text (``lines`` or ``jsonl``)."""
    prompts: list[str] = []
    metadata: list[dict[str, Any]] = []
    lines = [ln.strip() for ln in text.splitlines()]
    if fmt == "lines":
        for ln in lines:
            if ln:
                metadata.append({"index": len(prompts)})
                prompts.append(ln)
    elif fmt == "jsonl":
        for k, ln in enumerate(lines, 1):
            if not ln:
                continue
            try:
                obj = json.loads(ln)
            except json.JSONDecodeError as err:
                raise PromptSetError(f"line {k}: not JSON ({err})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise PromptSetError(f"line {k}: expected an object with a 'prompt' string")
            prompts.append(obj["prompt"])
            metadata.append(obj)
    else:
        raise PromptSetError(f"unknown prompt file format {fmt!r} (lines, jsonl)")
    return prompts, metadata


def fetch_prompt_set(name: str, profile: dict[str, Any] | None = None) -> Path:
    """Download (once) and verify prompt set ``name``; returns the cached file."""
    cfg = _prompt_config(profile)
    spec = prompt_set_spec(name, profile)
    cache = Path(cfg.get("cache_dir") or DEFAULT_CACHE)
    url = str(spec["url"])
    path = cached_file(url, cache / name)
    verify(
        path,
        spec.get("sha256"),
        source=url,
        allow_unpinned=not bool(cfg.get("require_checksums", False)),
        lock_dir=cache,
    )
    return path


def load_prompt_set(
    name: str, profile: dict[str, Any] | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """Prompts and metadata of set ``name`` (fetched and verified; see the module docstring)."""
    spec = prompt_set_spec(name, profile)
    path = fetch_prompt_set(name, profile)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise PromptSetError(
            f"prompt set {name!r} ({path}) is not UTF-8: byte {err.start} ({err.reason})"
        ) from None
    try:
        prompts, metadata = parse_prompts(text, str(spec["format"]))
    except PromptSetError as err:
        raise PromptSetError(f"prompt set {name!r} ({path}): {err}") from None
    if not prompts:
        raise PromptSetError(f"prompt set {name!r} ({path}) holds no prompts")
    if spec.get("count") is not None and len(prompts) != int(spec["count"]):
        raise PromptSetError(
            f"prompt set {name!r} ({path}): {len(prompts)} prompts, expected {spec['count']}"
        )
    return prompts, metadata


def load_prompt_file(
    source: dict[str, Any], split: str, profile: dict[str, Any]
) -> tuple[list[str], list[dict[str, Any]]]:
    """A task's prompts for ``split`` (``train`` / ``validation`` / ``test``) from its
    ``prompts`` section.

    ``source`` is ``{source: paper, train: <set>, test: <set>}``; a single ``set: <name>``
    serves both of those. ``validation`` must be named (``validation: <set>``): the paper's
    prompt sets have no validation split, and tuning on the test set would not be one.
    """
    if split == "validation" and not source.get("validation"):
        raise KeyError(
            f"prompt source {source} names no validation set: the paper's prompt sets have "
            "none; add `validation: <set>` (e.g. a held-out part of the training prompts)"
        )
    name = source.get(split) or source.get("set")
    if not name:
        raise KeyError(f"prompt source {source} names no set for split {split!r}")
    return load_prompt_set(str(name), profile)


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
SOURCE_NAME = "opd_source.json"


def _adapter_folder(
    source: str, subfolder: str | None, revision: str | None
) -> tuple[Path, str | None]:
    """The folder holding the adapter's files, and the commit it was resolved to (hub only).

    A hub repo is read through the huggingface_hub cache (``snapshot_download`` of the
    adapter's files only, at ``revision``), so ``HF_HUB_OFFLINE=1`` serves a cached snapshot.
    """
    src = Path(source).expanduser()
    if src.is_dir():
        return (src / subfolder if subfolder else src), None
    if "/" not in source or source.startswith((".", "/")):
        raise FileNotFoundError(f"adapter source {source!r} is neither a folder nor a hub id")
    from huggingface_hub import snapshot_download

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    snapshot = Path(
        snapshot_download(
            source, revision=revision, allow_patterns=[prefix + n for n in ADAPTER_FILES]
        )
    )
    return snapshot / prefix, snapshot.name


def fetch_adapter(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    revision: str | None = None,
    subfolder: str | None = None,
) -> Path:
    """A published LoRA adapter (e.g. a Flow-GRPO or DiffusionOPD teacher) as a peft folder at
    ``out_dir``.

    ``source``: a local peft folder (copied) or a hub repo id such as
    ``jieliu/SD3.5M-FlowGRPO-GenEval`` (only the adapter files are fetched, at ``revision``);
    ``subfolder`` is the adapter's folder inside it (``quanhaol/DiffusionOPD`` holds
    ``Student/lora``, ``GenEvalTeacher/lora``, ...). ``opd_source.json`` beside the files records
    where they came from, the commit a hub revision resolved to included. The folder is what
    ``FlowModel.load_adapter`` / ``opd train --teacher`` read.
    """
    folder, commit = _adapter_folder(str(source), subfolder, revision)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, out / name)
    if not (out / "adapter_config.json").is_file() or not any(
        (out / n).is_file() for n in ADAPTER_FILES[1:]
    ):
        where = f"{source}" + (f" (subfolder {subfolder})" if subfolder else "")
        raise FileNotFoundError(f"{where}: no peft adapter (adapter_config.json + weights)")
    record = {"source": str(source), "subfolder": subfolder, "revision": revision, "commit": commit}
    (out / SOURCE_NAME).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m opd.data fetch --config FILE``: fetch and verify every prompt set the config
    uses; ``python -m opd.data adapter SOURCE --out DIR``: fetch a published teacher LoRA."""
    p = argparse.ArgumentParser(prog="python -m opd.data")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download and verify the config's prompt sets")
    f.add_argument("--config", type=Path, default=None, help="resolved config file")
    f.add_argument("--profile", default=None)
    f.add_argument("sets", nargs="*", help="set names (default: every set the tasks use)")
    t = sub.add_parser("adapter", help="fetch a published LoRA (hub id or folder) as a teacher")
    t.add_argument("source", help="hub repo id (e.g. jieliu/SD3.5M-FlowGRPO-GenEval) or folder")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--revision", default=None)
    t.add_argument("--subfolder", default=None, help="the adapter's folder in the repository")
    args = p.parse_args(argv)
    if args.cmd == "adapter":
        print(fetch_adapter(args.source, args.out, args.revision, args.subfolder))
        return 0

    cfg = load_resolved(args.config) if args.config else load_config(args.profile)
    names = list(args.sets)
    if not names:
        for task in cfg["tasks"].values():
            src = task.get("prompts") or {}
            if src.get("source", "mini") != "mini":
                names += [src[k] for k in ("train", "test", "set") if src.get(k)]
    for name in dict.fromkeys(names):
        prompts, _ = load_prompt_set(name, cfg)
        print(f"{name}: {len(prompts)} prompts ({fetch_prompt_set(name, cfg)})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
