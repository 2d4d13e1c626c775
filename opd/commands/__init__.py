"""Sub-commands of the ``opd`` console script, one module each (``add_parser`` and ``run``).

Shared argument helpers live in :mod:`opd.commands._common`.
"""
