"""The package's layering (docs/ARCHITECTURE.md) holds: read from the source with ``ast``, no
import runs from a lower layer to a higher one, the modules import each other without a cycle,
and an import inside a function defers something heavy.

Every ``import`` counts, at module level or inside a function (a deferred import is still a
dependency); only imports under ``if TYPE_CHECKING:`` (annotations) are left out. A function-level
import of another ``opd`` module is allowed where it keeps a heavy package (torch, transformers,
diffusers, peft, accelerate, safetensors, tokenizers, matplotlib, seaborn, pandas, scipy, PIL)
out of the importing module's own imports: light modules (the config, the workflow's parse, the
command-line parser) stay light that way. Any other reason is written on the import's line as
``# deferred: <reason>``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = frozenset(
    {"torch", "transformers", "diffusers", "peft", "accelerate", "matplotlib", "seaborn", "pandas"}
    | {"scipy", "safetensors", "tokenizers", "PIL"}
)

# The layers of docs/ARCHITECTURE.md, bottom first: a module may import its own layer and the
# layers below. The first pattern that matches a module decides its layer.
LAYERS: tuple[tuple[str, str], ...] = (
    (
        "core",
        r"opd|opd\.(registry|config|released|manifest|faults|calltime|training\.options)"
        r"|baselines\._configs",
    ),
    ("foundations", r"opd\.(sampling(\..+)?|data|models(\..+)?|worlds(\..+)?)"),
    ("scoring", r"opd\.(objectives|rewards(\..+)?)"),
    ("training", r"opd\.(training(\..+)?|evaluation|published|validation)"),
    ("analysis", r"opd\.(analysis|reporting)(\..+)?"),
    ("entry points", r"opd\.(cli|warmstart|commands(\..+)?)"),
    ("baselines", r"baselines(\..+)?"),
)


def layer_of(module: str) -> int:
    for rank, (_, pattern) in enumerate(LAYERS):
        if re.fullmatch(pattern, module):
            return rank
    raise KeyError(f"{module} is in no layer of docs/ARCHITECTURE.md")


def module_sources(root: Path = REPO) -> dict[str, str]:
    """Module name -> source of every ``opd`` and ``baselines`` module."""
    out = {}
    for package in ("opd", "baselines"):
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path.read_text(encoding="utf-8")
    return out


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _top_level(body: Iterable[ast.stmt]) -> Iterable[ast.stmt]:
    """Statements run at import time: the module's, and those of its ``if`` / ``try`` blocks
    (an ``if TYPE_CHECKING:`` block excepted)."""
    for node in body:
        if isinstance(node, ast.If) and not _is_type_checking(node):
            yield from _top_level([*node.body, *node.orelse])
        elif isinstance(node, ast.Try):
            yield from _top_level([*node.body, *node.finalbody])
            for handler in node.handlers:
                yield from _top_level(handler.body)
        else:
            yield node


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: Mapping[str, str]
) -> list[str]:
    """What ``node`` imports: ``from a import b`` imports module ``a.b`` where that is a module
    (``a`` is loaded before any of its modules anyway), and ``a`` where ``b`` is a name in it."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
    names = len(submodules) < len(node.names)
    return [*submodules, *([base] if names else [])]


def imports(sources: Mapping[str, str]) -> list[tuple[str, str, int, bool]]:
    """(importer, imported, line, at module level) for every import of a known module or a
    third-party package (its top-level name); ``from a import b`` imports ``a`` and, where it is
    a module, ``a.b``."""
    out = []
    for module, source in sources.items():
        tree = ast.parse(source)
        is_package = "." not in module or any(name.startswith(module + ".") for name in sources)
        annotations = {
            id(n) for block in ast.walk(tree) if _is_type_checking(block) for n in ast.walk(block)
        }
        top = {id(n) for n in _top_level(tree.body)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or id(node) in annotations:
                continue
            for target in _targets(node, module, is_package, sources):
                if target in sources:
                    name = target
                elif target.split(".")[0] in ("opd", "baselines"):
                    continue  # a name imported from a module, not a module
                else:
                    name = target.split(".")[0]
                if name != module:
                    out.append((module, name, node.lineno, id(node) in top))
    return out


def upward_imports(sources: Mapping[str, str]) -> list[str]:
    return [
        f"{a}:{line} imports {b} ({LAYERS[layer_of(b)][0]} above {LAYERS[layer_of(a)][0]})"
        for a, b, line, _ in imports(sources)
        if b in sources and layer_of(b) > layer_of(a)
    ]


def cycles(sources: Mapping[str, str]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for a, b, _, _ in imports(sources):
        if b in sources:
            graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def heavy_at_import(sources: Mapping[str, str]) -> dict[str, frozenset[str]]:
    """The heavy packages importing each module loads (its module-level imports, transitively,
    its parent packages included)."""
    top: dict[str, set[str]] = {m: set() for m in sources}
    for a, b, _, at_top in imports(sources):
        if at_top:
            top[a].add(b)
    out = {}
    for module in sources:
        seen, todo = set(), [module]
        while todo:
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            parts = m.split(".")
            todo += [".".join(parts[:i]) for i in range(1, len(parts))]
            todo += [b for b in top.get(m, ()) if b in sources]
        out[module] = frozenset(b for m in seen if m in top for b in top[m] if b in HEAVY)
    return out


DEFERRED = re.compile(r"#\s*deferred:\s*\S")


def needless_deferrals(sources: Mapping[str, str]) -> list[str]:
    """Function-level imports of a module that load no heavy package the importer lacks and
    carry no ``# deferred: <reason>`` comment on their line."""
    heavy = heavy_at_import(sources)
    lines = {m: s.splitlines() for m, s in sources.items()}
    return [
        f"{a}:{line} defers {b}, which loads nothing heavy that {a} does not"
        for a, b, line, at_top in imports(sources)
        if not at_top
        and b in sources
        and not heavy[b] - heavy[a]
        and not DEFERRED.search(lines[a][line - 1])
    ]


def test_every_module_is_in_a_layer() -> None:
    for module in module_sources():
        layer_of(module)


def test_no_import_runs_upward() -> None:
    assert upward_imports(module_sources()) == []


def test_no_import_cycle() -> None:
    assert cycles(module_sources()) == []


def test_an_import_inside_a_function_defers_something_heavy() -> None:
    assert needless_deferrals(module_sources()) == []


def _planted(module: str, line: str) -> dict[str, str]:
    sources = module_sources()
    sources[module] = f"{line}\n{sources[module]}"
    return sources


@pytest.mark.parametrize(
    ("module", "line", "check"),
    [
        ("opd.sampling", "import opd.training.loop", upward_imports),
        ("opd.config", "def f():\n    from opd.cli import main", upward_imports),
        ("opd.models.tiny", "from opd.rewards import compose", upward_imports),
        ("opd.objectives", "import opd.rewards.compose", lambda s: []),  # the same layer: allowed
        ("opd.models.lora", "from opd.models import tiny", cycles),
        ("opd.analysis.retention", "def f():\n    import opd.analysis.plots", cycles),
    ],
)
def test_a_planted_import_is_caught(module: str, line: str, check) -> None:
    found = check(_planted(module, line))
    if check is upward_imports:
        assert found and all(module in f for f in found)
    elif check is cycles:
        assert any(module in component for component in found)
    else:
        assert upward_imports(_planted(module, line)) == []


def test_a_needless_deferral_is_caught_and_a_heavy_one_is_not() -> None:
    light = _planted("opd.config", "def f():\n    from opd import registry")
    assert any(f.startswith("opd.config:2 defers opd.registry") for f in needless_deferrals(light))
    # the config is torch-free; deferring the training loop (torch) is what keeps it so
    reason = _planted("opd.config", "def f():\n    from opd import registry  # deferred: why")
    assert not any(f.startswith("opd.config:2 ") for f in needless_deferrals(reason))
    heavy = _planted("opd.config", "def f():\n    from opd.training import loop")
    assert not any(f.startswith("opd.config:2 ") for f in needless_deferrals(heavy))


def test_the_architecture_doc_names_every_layer() -> None:
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for name, _ in LAYERS:
        assert f"**{name}**" in doc, name
