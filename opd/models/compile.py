"""Compiling a model's transformer with ``torch.compile``, or keeping eager mode where that fails.

Both pretraining (``base.compile``) and every training job that loads the base (``model.compile``;
evaluations stay eager) compile the transformer in place through :func:`maybe_compile`:
parameter names and state dicts stay as they are, so checkpoints and adapters are unchanged.
Compiled kernels round in another order than eager ones (same accuracy against float64:
docs/PERFORMANCE.md). Where the default backend cannot build kernels (a CPU without a C++
compiler), :func:`compiler_works` says so and the module stays eager, with a warning naming the
config option.
"""

from __future__ import annotations

import warnings

import torch


def compiler_works() -> bool:
    """Whether ``torch.compile``'s default backend can build kernels on this machine (it needs a
    C++ compiler on a CPU): a two-op function is compiled and run once."""
    try:
        x = torch.linspace(0, 1, 8)
        return bool(torch.allclose(torch.compile(lambda t: t.sin() + 1)(x), x.sin() + 1))
    except Exception:  # any backend failure means "fall back to eager"
        return False


def maybe_compile(module: torch.nn.Module, wanted: bool, option: str = "base.compile") -> bool:
    """Compile ``module`` in place (its parameter names and state dict unchanged) when
    ``wanted`` and the compiler works; warns, naming the config ``option``, and keeps eager
    mode when it does not. Returns whether the module is compiled."""
    if not wanted:
        return False
    if not compiler_works():
        warnings.warn(
            f"{option}: torch.compile cannot build kernels here (no C++ compiler?); "
            "the model runs in eager mode, slower, with slightly different rounding",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    module.compile(dynamic=False)
    return True
