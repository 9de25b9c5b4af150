"""ARCHITECTURE.md's module tables name every module there is, and nothing that is not."""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import import_graph  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _documented() -> set[str]:
    text = (REPO / "ARCHITECTURE.md").read_text()
    out = set()
    for pkg in import_graph.PACKAGES:
        table = text.split(f"### {pkg}\n", 1)[1].split("\n\n", 1)[0]
        for row in table.splitlines()[2:]:
            for name in re.findall(r"`([a-z_.]+)`", row.split("|")[1]):
                out.add(f"{pkg}.{name}")
    return out


def test_the_module_tables_match_the_files():
    real = {m for m in import_graph.modules() if not m.endswith("__main__") and m not in import_graph.PACKAGES}
    # a subpackage's __init__ is empty: its modules are what it holds
    real -= {m for m in real if any(o.startswith(m + ".") for o in real)} - {"tina_core.cli"}
    documented = _documented()
    assert sorted(real - documented) == [], "modules missing from ARCHITECTURE.md"
    assert sorted(documented - real) == [], "ARCHITECTURE.md names modules that do not exist"
