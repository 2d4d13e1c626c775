"""The ``opd`` console script: list what is registered and run the suite's steps.

Each sub-command lives in its own module under ``opd.commands`` with ``add_parser(sub)`` and
``run(args) -> int``; the modules are discovered, so adding a command is adding a file
(:func:`opd.commands.build_parser`). Commands are thin: they parse arguments, load the
validated config and call the library. In a workflow job with a warm server
(:mod:`opd.warmstart`) the command runs there.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from opd.commands import build_parser, dispatch
from opd.warmstart import run_client

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and os.environ.get("OPD_WARM_SOCKET"):
        # a workflow job with a warm server: run there, else start cold
        rc = run_client(sys.argv[1:])
        if rc is not None:
            return rc
    return dispatch(argv)


if __name__ == "__main__":
    sys.exit(main())
