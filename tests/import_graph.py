"""The import graph of tina_core and tina_tui, read from the source (every import statement,
function-local ones included), and what must never be in it.

    python tests/import_graph.py          # the graph, then the problems (exit 1 if any)

Rules: no import circles anywhere, and nothing in tina_core imports tina_tui (the cockpit is a thin
layer over the headless core). tests/test_import_hygiene.py runs the same check.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tina_core", "tina_tui")


def modules(root: Path = REPO) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def graph(root: Path = REPO) -> dict[str, set[str]]:
    """``{module: modules it imports}``, among tina's own modules only."""
    mods = modules(root)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[name] |= {t for t in targets if t in mods and t != name}
        # a package's own __init__ is imported on the way to any of its modules: not a dependency
        edges[name] -= {p for p in edges[name] if name.startswith(p + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def problems(edges: dict[str, set[str]]) -> list[str]:
    out = [f"import circle: {' <-> '.join(c)}" for c in cycles(edges)]
    out += [f"{m} imports the cockpit ({t})" for m, ts in sorted(edges.items()) if m.startswith("tina_core")
            for t in sorted(ts) if t.startswith("tina_tui")]
    return out


if __name__ == "__main__":
    g = graph()
    for m in sorted(g):
        print(f"{m} -> {', '.join(sorted(g[m])) or '-'}")
    found = problems(g)
    print("\n".join(found) if found else "no import circles; tina_core never imports tina_tui")
    sys.exit(1 if found else 0)
