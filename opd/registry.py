"""Name -> object registries for samplers, objectives, scorers and training methods.

A decorator registers an object under a name; looking up an unknown name raises an error that
lists the known ones. Methods and scorers can also come from outside packages through the entry
point groups ``opd.methods`` and ``opd.scorers``; files dropped in the top-level ``baselines/``
package register themselves on import (see :func:`load_plugins`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that no registry entry carries; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable.
        return str(self.args[0])


class Registry(Generic[T]):
    """A named collection of objects of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name``."""

        def deco(obj: T) -> T:
            if name in self._items and not overwrite and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T, *, overwrite: bool = False) -> T:
        """Register ``obj`` under ``name`` (non-decorator form)."""
        return self.register(name, overwrite=overwrite)(obj)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or self.entry_point_group is None:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name not in self._items:
                self._items[ep.name] = ep.load()

    def get(self, name: str) -> T:
        """The object registered as ``name``; an unknown name lists the known ones."""
        if name not in self._items:
            load_plugins()
            self._load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        load_plugins()
        self._load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._items[n]) for n in self.names()]


SAMPLERS: Registry[Any] = Registry("sampler")
OBJECTIVES: Registry[Any] = Registry("objective")
SCORERS: Registry[Any] = Registry("scorer", entry_point_group="opd.scorers")
METHODS: Registry[Any] = Registry("method", entry_point_group="opd.methods")

# Modules whose import registers entries; imported lazily so that importing the registry stays
# cheap and the layering (registry at the bottom) holds.
_BUILTIN_MODULES = (
    "opd.sampling",
    "opd.objectives",
    "opd.rewards",
    "opd.training.methods",
)
_plugins_loaded = False


def load_plugins() -> None:
    """Import the built-in modules and every module of the ``baselines`` package once."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:  # a layer not built (or its extra not installed)
            if err.name is None or not mod.startswith(err.name):
                raise
    try:
        baselines = importlib.import_module("baselines")
    except ModuleNotFoundError:
        return
    for info in pkgutil.iter_modules(baselines.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"baselines.{info.name}")
