"""The house rules of docs/architecture.md, checked on the import graph.

The graph is built from the AST of every module under agent/ and server/, including
imports inside functions (a lazy import is still a dependency; it only hides a cycle
until the day that function runs first).  ``from pkg import name`` counts as an import
of ``pkg.name`` when that is a module, else of ``pkg``.

Importing ``a.b.c`` also runs ``a/b/__init__.py``, so it counts as importing that
package too (unless the importer is inside it).

Rules:
1. no import cycles;
2. ``server`` imports only the contract modules of ``agent`` (CONTRACT below), and the
   contract imports nothing else of ``agent``;
3. the teacher's alert client (``server.alerts``) imports nothing from the collector;
4. desktop backends (``agent.desktop``) import nothing from the runtime or the
   components that use them;
5. ``agent`` imports nothing from ``server``.

Each rule is also run against a small synthetic tree that breaks it, so a checker that
stopped finding violations would fail here too.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# What the collector (and the teacher's client) may import from the agent: the wire and
# config contract and the shared CLI/file helpers.  docs/architecture.md lists the same.
CONTRACT = ("agent", "agent.protocol", "agent.errors", "agent.files", "agent.signals", "agent.config")
# What the desktop backends may not reach: whoever uses them.
ABOVE_DESKTOP = ("agent.core", "agent.report", "agent.uplink", "agent.policy", "agent.filter", "agent.cli")


# --------------------------------------------------------------------------- the graph


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def load_modules(root: Path, packages=("agent", "server")) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(root, path)] = path
    return found


def _resolve(current: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The module *name* refers to, or its nearest enclosing package that is ours."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """{module: {imported module: first line}} for imports between our own modules."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}" if base else alias.name
                    targets.append(sub if sub in modules else base)
            for target in targets:
                known = _known(target, modules)
                if known is None or known == name:
                    continue
                edges.setdefault(known, node.lineno)
                # Importing a.b.c runs a/b/__init__.py too: a package's own modules
                # already have it loaded, anyone else depends on what it imports.
                parent = known.rpartition(".")[0]
                while parent:
                    if parent in modules and not (name == parent or name.startswith(parent + ".")):
                        edges.setdefault(parent, node.lineno)
                    parent = parent.rpartition(".")[0]
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _in_contract(name: str) -> bool:
    return name == "agent" or _under(name, CONTRACT[1:])


def violations(root: Path) -> list[str]:
    modules = load_modules(root)
    graph = import_graph(modules)
    problems = []

    def where(src: str, dst: str) -> str:
        return f"{modules[src].relative_to(root)}:{graph[src][dst]}: {src} imports {dst}"

    for component in cycles(graph):
        problems.append("import cycle: " + " <-> ".join(component))
    for src, edges in graph.items():
        for dst in edges:
            if src.startswith("server") and dst.startswith("agent") and not _in_contract(dst):
                problems.append(where(src, dst) + " (server may import only the agent's contract)")
            if _in_contract(src) and src.startswith("agent") and dst.startswith("agent") and not _in_contract(dst):
                problems.append(where(src, dst) + " (the contract may import only the contract)")
            if _under(src, ("server.alerts",)) and dst.startswith("server") and not _under(dst, ("server.alerts",)) \
                    and dst != "server":
                problems.append(where(src, dst) + " (the alert client imports nothing from the collector)")
            if _under(src, ("agent.desktop",)) and _under(dst, ABOVE_DESKTOP):
                problems.append(where(src, dst) + " (desktop backends import nothing from the runtime)")
            if src.startswith("agent") and dst.startswith("server"):
                problems.append(where(src, dst) + " (the agent imports nothing from the collector)")
    if "server" in graph and any(not _in_contract(d) for d in graph["server"] if d.startswith("agent")):
        problems.append("server/__init__.py must stay light")
    return sorted(set(problems))


# --------------------------------------------------------------------------- the real tree


def test_the_tree_follows_the_house_rules():
    assert violations(REPO) == []


def test_every_module_says_what_it_owns():
    missing = [str(p.relative_to(REPO)) for p in load_modules(REPO).values()
               if not ast.get_docstring(ast.parse(p.read_text()))]
    assert missing == []


# --------------------------------------------------------------------------- the checker itself


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    base = {
        "agent/__init__.py": '"""x"""\n', "agent/protocol.py": '"""x"""\n', "agent/errors.py": '"""x"""\n',
        "agent/files.py": '"""x"""\n', "agent/config/__init__.py": '"""x"""\n',
        "agent/core/__init__.py": '"""x"""\n', "agent/core/runtime.py": '"""x"""\n',
        "agent/desktop/__init__.py": '"""x"""\n', "agent/desktop/x11.py": '"""x"""\n',
        "server/__init__.py": '"""x"""\nfrom agent import __version__\n',
        "server/store/__init__.py": '"""x"""\n', "server/alerts/__init__.py": '"""x"""\n',
        "server/alerts/client.py": '"""x"""\nfrom agent import protocol\n',
    }
    base.update(files)
    for rel, text in base.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_a_clean_synthetic_tree_passes(tmp_path):
    assert violations(_tree(tmp_path, {})) == []


@pytest.mark.parametrize("files, expected", [
    ({"agent/core/a.py": "from . import b\n", "agent/core/b.py": "def f():\n    from .a import x\n"},
     "import cycle: agent.core.a <-> agent.core.b"),
    ({"server/store/x.py": "from agent.core.runtime import Runtime\n"},
     "server/store/x.py:1: server.store.x imports agent.core.runtime (server may import only the agent's contract)"),
    ({"server/alerts/board.py": "\n\ndef f():\n    from ..store import Store\n"},
     "server/alerts/board.py:4: server.alerts.board imports server.store "
     "(the alert client imports nothing from the collector)"),
    ({"agent/desktop/wayland.py": "from ..core import runtime\n"},
     "agent/desktop/wayland.py:1: agent.desktop.wayland imports agent.core.runtime "
     "(desktop backends import nothing from the runtime)"),
    ({"agent/protocol.py": "from .core.runtime import x\n"},
     "agent/protocol.py:1: agent.protocol imports agent.core.runtime (the contract may import only the contract)"),
    ({"agent/core/runtime.py": "import server.store\n"},
     "agent/core/runtime.py:1: agent.core.runtime imports server.store (the agent imports nothing from the collector)"),
])
def test_each_rule_fails_on_a_planted_violation(tmp_path, files, expected):
    assert expected in violations(_tree(tmp_path, files))
