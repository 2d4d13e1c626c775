"""Scorers: callables ``(images, prompts, metadata) -> np.ndarray`` of per-image scores.

Every scorer is registered in ``opd.registry.SCORERS`` as a factory; :func:`get_scorer` builds
one by name (keyword arguments go to the factory, e.g. the folder of a learned scorer's
weights). Images are uint8 arrays of shape (N, H, W, 3); ``metadata`` is one dict per image.
"""

from __future__ import annotations

import importlib
from typing import Any

from opd.registry import SCORERS

# Submodules that register scorers when imported.
_SCORER_MODULES = ("compose", "text", "learned", "heldout", "paper")

for _mod in _SCORER_MODULES:
    try:
        importlib.import_module(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _err:  # pragma: no cover - only while a module is absent
        if _err.name != f"{__name__}.{_mod}":
            raise


def get_scorer(name: str, **kwargs: Any) -> Any:
    """Build the scorer registered as ``name``; unknown names list the known ones."""
    return SCORERS.get(name)(**kwargs)


__all__ = ["get_scorer"]
