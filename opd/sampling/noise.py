"""Per-sample noise keyed by (seed, step, sample id): a sample's noise never depends on the
batch it was drawn in (or on the process that drew it), so rollouts are reproducible under any
batch layout or data-parallel split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# --------------------------------------------------------------------------------------------
# noise keyed by (seed, step, sample id)
# --------------------------------------------------------------------------------------------
_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _noise_key(seed: int, step: int, sample_id: int) -> int:
    z = _splitmix64(int(seed) & _MASK64)
    z = _splitmix64(z ^ (int(step) & _MASK64))
    z = _splitmix64(z ^ (int(sample_id) & _MASK64))
    return z & ((1 << 63) - 1)


def _ids_list(sample_ids: Sequence[int] | Tensor) -> list[int]:
    if isinstance(sample_ids, Tensor):
        return [int(i) for i in sample_ids.reshape(-1).tolist()]
    return [int(i) for i in sample_ids]


def step_noise(
    seed: int,
    step: int,
    sample_ids: Sequence[int] | Tensor,
    shape: tuple[int, ...],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of shape (B, *shape), row i keyed by (seed, step, sample_ids[i]).

    Each row comes from its own CPU ``torch.Generator`` seeded with a splitmix64 mix of the
    three integers (no Python ``hash``), drawn in float32 and then moved to ``device`` / cast to
    ``dtype``: a sample's noise is the same in any batch and on any device. The initial state of
    a rollout uses ``step = -1``.
    """
    rows = []
    for sid in _ids_list(sample_ids):
        g = torch.Generator(device="cpu")
        g.manual_seed(_noise_key(seed, step, sid))
        rows.append(torch.randn(tuple(shape), generator=g, dtype=torch.float32))
    if not rows:
        return torch.empty((0, *shape), device=device, dtype=dtype)
    return torch.stack(rows).to(device=device, dtype=dtype)
