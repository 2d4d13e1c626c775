"""Deterministic fault injection for the reliability tests (off unless ``OPD_FAULT`` is set).

``OPD_FAULT="<point>:<step>"`` kills the current process with SIGKILL when the code passes the
named point at that step, e.g. ``train.step:3`` (inside optimizer step 3, before the update),
``checkpoint.write:2`` (checkpoint of step 2 half written) or ``evaluate.checkpoint:1``. Tests
use it to interrupt a run at a chosen place without racing a timer; production runs never set
it, and the check costs one environment lookup.

``OPD_FAULT_SCOPE=group`` kills the whole process group instead (``os.killpg``): started under
a ``snakemake`` launched in its own session, a job then takes down the workflow and every
sibling job with it, which is what a power cut or an OOM kill of the scheduler does.
"""

from __future__ import annotations

import os
import signal

ENV = "OPD_FAULT"
SCOPE_ENV = "OPD_FAULT_SCOPE"


def maybe_fail(point: str, step: int) -> None:
    """SIGKILL this process (or its group, see ``OPD_FAULT_SCOPE``) if ``OPD_FAULT`` names
    ``point`` at ``step``."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, at = spec.rpartition(":")
    if name == point and at.isdigit() and int(at) == step:
        if os.environ.get(SCOPE_ENV) == "group":
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
