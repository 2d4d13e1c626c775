"""Third-party scorer weights: fetch, pin by SHA-256, load pickles with ``weights_only=True``.

Some scorer heads ship as pickled PyTorch files (the LAION aesthetic MLP, HPSv2.1, ImageReward).
A pickle can run code when it is loaded, so these files are (1) checked against a SHA-256
digest pinned in the config (``scorer_options.<name>.sha256``) before anything reads them and
(2) loaded with ``torch.load(..., weights_only=True)``, which only rebuilds tensors and plain
containers.

Sources (:func:`resolve_file`): a local path, ``hf://<repo id>/<file>[@<revision>]`` (through
``huggingface_hub``, which caches it), or an ``http(s)://`` URL (downloaded once into the cache
folder). A file without a pinned digest is refused unless ``allow_unpinned`` is set; then its
digest is recorded on first use in ``<cache>/checksums.lock.json`` (trust on first use) and
every later load is checked against that record, with a warning that says how to pin it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from opd.data import ChecksumError, cached_file, sha256_file
from opd.data import verify as _verify

DEFAULT_CACHE = os.environ.get("OPD_WEIGHTS_CACHE", "resources/weights")

__all__ = [
    "DEFAULT_CACHE",
    "ChecksumError",
    "fetch_verified",
    "load_torch_weights",
    "parse_hf",
    "resolve_file",
    "sha256_file",
    "unwrap_state_dict",
    "verify",
]


def parse_hf(source: str) -> tuple[str, str, str | None]:
    """``hf://owner/repo/path/in/repo@rev`` -> (repo id, filename, revision)."""
    rest = source.removeprefix("hf://")
    rev = None
    if "@" in rest:
        rest, rev = rest.rsplit("@", 1)
    parts = rest.split("/")
    if len(parts) < 3:
        raise ValueError(f"{source!r}: expected hf://owner/repo/file[@revision]")
    return "/".join(parts[:2]), "/".join(parts[2:]), rev


def resolve_file(source: str | os.PathLike[str], cache_dir: str | os.PathLike[str]) -> Path:
    """A local file for ``source`` (path, ``hf://`` or URL), downloading it if needed."""
    text = str(source)
    if text.startswith("hf://"):
        from huggingface_hub import hf_hub_download

        repo, filename, rev = parse_hf(text)
        return Path(hf_hub_download(repo, filename, revision=rev))
    return cached_file(text, cache_dir)


def verify(
    path: str | os.PathLike[str],
    sha256: str | None,
    *,
    source: str | None = None,
    allow_unpinned: bool = False,
    cache_dir: str | os.PathLike[str] = DEFAULT_CACHE,
) -> str:
    """Check ``path`` against ``sha256`` (refusing unpinned files unless ``allow_unpinned``,
    which records the digest on first use in ``<cache_dir>/checksums.lock.json``)."""
    return _verify(path, sha256, source=source, allow_unpinned=allow_unpinned, lock_dir=cache_dir)


def fetch_verified(
    source: str | os.PathLike[str],
    sha256: str | None,
    *,
    allow_unpinned: bool = False,
    cache_dir: str | os.PathLike[str] = DEFAULT_CACHE,
) -> Path:
    """Resolve ``source`` to a local file and verify it (see :func:`verify`)."""
    path = resolve_file(source, cache_dir)
    verify(path, sha256, source=str(source), allow_unpinned=allow_unpinned, cache_dir=cache_dir)
    return path


def load_torch_weights(
    source: str | os.PathLike[str],
    sha256: str | None,
    *,
    allow_unpinned: bool = False,
    cache_dir: str | os.PathLike[str] = DEFAULT_CACHE,
) -> Any:
    """A verified pickle loaded with ``torch.load(..., weights_only=True)`` on the CPU."""
    import torch

    path = fetch_verified(source, sha256, allow_unpinned=allow_unpinned, cache_dir=cache_dir)
    return torch.load(path, map_location="cpu", weights_only=True)


def unwrap_state_dict(obj: Any, keys: tuple[str, ...] = ("state_dict", "model")) -> dict:
    """The tensor dict inside a checkpoint (``{"state_dict": ...}`` wrappers removed)."""
    while isinstance(obj, dict):
        inner = next((obj[k] for k in keys if k in obj and isinstance(obj[k], dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise TypeError(f"checkpoint is not a state dict ({type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}
