"""What `tina ... --json` prints: standard JSON, whatever the numbers.

A diverged loss is NaN and a run could once be priced at infinity; Python's ``json`` writes those
as ``NaN`` and ``Infinity``, which no other JSON reader takes. Here they are ``null``.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """A copy of a JSON-like ``obj`` with every NaN or infinite number as None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def json_text(obj: Any) -> str:
    """``obj`` as indented standard JSON (see ``finite``; anything else unknown as its text)."""
    return json.dumps(finite(obj), indent=2, default=str, allow_nan=False)
