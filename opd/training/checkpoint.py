"""Atomic, verifiable checkpoints: safetensors files plus a JSON manifest.

A checkpoint is a folder ``step_XXXXXXX`` holding one safetensors file per group of tensors
(adapter weights, EMA weights, optimizer state, method state) and ``manifest.json`` with the
step, compute counters, config hash, extra JSON state and the SHA-256 of every file. It is
written into a temporary folder that is renamed into place, so a crash leaves either a complete
checkpoint or a leftover ``.tmp`` folder that is ignored. Loading verifies every checksum and
names the path of anything truncated or altered: a damaged checkpoint is never silently skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from opd.faults import maybe_fail

MANIFEST = "manifest.json"
PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint that is damaged, incomplete or made under another configuration."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"{PREFIX}{step:07d}"


def save_checkpoint(
    root: Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    manifest: dict[str, Any],
) -> Path:
    """Write ``tensors`` (group -> name -> tensor) and ``manifest`` atomically under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, step)
    tmp = root / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files: dict[str, str] = {}
    for group, named in tensors.items():
        path = tmp / f"{group}.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in named.items()}, str(path))
        files[path.name] = _sha256(path)
        maybe_fail("checkpoint.write", step)
    data = dict(manifest)
    data["step"] = step
    data["files"] = files
    mpath = tmp / MANIFEST
    with mpath.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():  # a rerun of the same step replaces its older copy
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root`` in step order (temporary folders ignored)."""
    root = Path(root)
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def read_manifest(path: Path) -> dict[str, Any]:
    mpath = Path(path) / MANIFEST
    if not mpath.exists():
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST} (incomplete or damaged)")
    try:
        return json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint manifest {mpath} is unreadable: {err}") from None


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check every file's checksum; return the manifest or raise naming the damaged file."""
    manifest = read_manifest(path)
    for name, digest in manifest.get("files", {}).items():
        fpath = Path(path) / name
        if not fpath.exists():
            raise CheckpointError(f"checkpoint file missing: {fpath}")
        if _sha256(fpath) != digest:
            raise CheckpointError(f"checkpoint file corrupted (checksum mismatch): {fpath}")
    return manifest


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Verify and load a checkpoint folder: (group -> tensors, manifest)."""
    manifest = verify_checkpoint(path)
    tensors = {
        Path(name).stem: load_file(str(Path(path) / name))
        for name in manifest.get("files", {})
        if name.endswith(".safetensors")
    }
    return tensors, manifest


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimizer's state into named tensors plus a JSON-able remainder."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, extra in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
