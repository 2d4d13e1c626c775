"""Fault bookkeeping for the reliability tests.

Every injected fault is registered with the ``fault`` fixture: ``with fault("name"): ...``
counts it as tried on entry and as survived when the block's checks pass (for faults whose
outcome is only known later, ``fault.tried(name)`` then ``fault.survived(name)``). The terminal
summary prints ``faults: N tried, M survived`` and names any fault that was not survived.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest


class FaultLog:
    """Names of the faults tried and survived in this session (in order)."""

    def __init__(self) -> None:
        self.tried_names: list[str] = []
        self.survived_names: list[str] = []

    def tried(self, name: str) -> str:
        self.tried_names.append(name)
        return name

    def survived(self, name: str) -> None:
        if name not in self.tried_names:
            raise ValueError(f"fault {name!r} was never tried")
        self.survived_names.append(name)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.tried(name)
        yield
        self.survived(name)

    def not_survived(self) -> list[str]:
        left = list(self.survived_names)
        out = []
        for name in self.tried_names:
            if name in left:
                left.remove(name)
            else:
                out.append(name)
        return out


LOG = FaultLog()


@pytest.fixture
def fault() -> FaultLog:
    """The session's fault log (see the module docstring)."""
    return LOG


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not LOG.tried_names:
        return
    terminalreporter.write_sep("=", "reliability: injected faults")
    terminalreporter.write_line(
        f"faults: {len(LOG.tried_names)} tried, {len(LOG.survived_names)} survived"
    )
    for name in LOG.not_survived():
        terminalreporter.write_line(f"  not survived: {name}")
