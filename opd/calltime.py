"""Where a job's seconds go: inside model calls, or around them.

A process-wide ledger of wall seconds per section, summed by the `timed` context manager at the
few places that do the mathematics: ``forward`` (every transformer call of a `FlowModel`, CFG
halves and teachers included, without gradient), ``forward_grad`` (the same with gradient),
``backward`` (every ``loss.backward()`` of pretraining, the methods and scorer training),
``score`` (the reward and benchmark scorers on decoded images) and ``scorer_training`` (the
learned scorers' own training steps, their backward included). Everything a job does outside
these sections (imports, loading, rendering, sampler arithmetic, optimizer steps, writing) is
the rest. On the CPU a call's wall time is its compute; on a GPU, without a synchronisation,
it is mostly the kernels' launch, so the sections are a CPU measurement. The warm server
writes a job's `snapshot` into its ledger, and ``benchmarks/workflow_rules.py`` sums them per
rule. Sections do not nest: an inner `timed` block inside an outer one is not counted twice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

SECTIONS = ("forward", "forward_grad", "backward", "score", "scorer_training")

_seconds: dict[str, float] = dict.fromkeys(SECTIONS, 0.0)
_calls: dict[str, int] = dict.fromkeys(SECTIONS, 0)
_depth = 0
_clock = time.perf_counter


@contextlib.contextmanager
def timed(section: str) -> Iterator[None]:
    """Add the block's wall seconds to ``section`` (one of `SECTIONS`) unless already inside one."""
    global _depth
    if section not in _seconds:
        raise ValueError(f"unknown section {section!r}; one of {SECTIONS}")
    if _depth:
        yield
        return
    _depth += 1
    t0 = _clock()
    try:
        yield
    finally:
        _seconds[section] += _clock() - t0
        _calls[section] += 1
        _depth -= 1


def snapshot() -> dict[str, dict[str, float | int]]:
    """Seconds and call counts per section so far in this process."""
    return {
        "seconds": {k: round(v, 3) for k, v in _seconds.items()},
        "calls": dict(_calls),
    }


def reset() -> None:
    """Zero every section (a forked worker starts from the server's zeros anyway)."""
    global _depth
    for k in SECTIONS:
        _seconds[k] = 0.0
        _calls[k] = 0
    _depth = 0
