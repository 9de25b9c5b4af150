"""The type checker over both packages, as `make test` and CI run it: mypy with pyproject.toml's
[tool.mypy] (tina_core and tina_tui; the training stack's sources skipped), clean. A field renamed
in a run object, a TypedDict or a dataclass fails here before it ships."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_mypy_is_clean(tmp_path):
    # a cache of this run's own: as cold as CI's clean clone, and never shared by two workers
    out = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("Success: no issues found"), out.stdout
