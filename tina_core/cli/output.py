"""What tina's commands print: standard JSON for `--json`, and plain aligned text for people.

Text from files (a run's name, a reward key, a reason) is written out as ``terminal.printable``
makes it in every table cell and styled text here, so it never acts on the terminal.

A diverged loss is NaN and a run could once be priced at infinity; Python's ``json`` writes those
as ``NaN`` and ``Infinity``, which no other JSON reader takes. Here they are ``null``.

The tables of `tina ls` and `tina status` are a few padded columns, coloured on a colour terminal:
written here rather than with rich, whose import alone costs `tina ls` more than its work does.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Iterable, Sequence, TextIO

from tina_core.terminal import printable

# SGR codes of the styles the commands use
_SGR = {"bold": "1", "red": "31", "green": "32", "yellow": "33", "blue": "34"}
Cell = "str | tuple[str, str | None]"  # text, or (text, style)


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


def colour(stream: TextIO = sys.stdout) -> bool:
    """Whether ``stream`` is a terminal that takes colours (not a pipe, NO_COLOR, TERM=dumb)."""
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def styled(text: str, style: str | None, stream: TextIO = sys.stdout) -> str:
    """``text`` (``printable``) in ``style`` ("bold red"...) where ``stream`` shows colours."""
    text = printable(text)
    codes = ";".join(_SGR[w] for w in (style or "").split() if w in _SGR)
    return f"\x1b[{codes}m{text}\x1b[0m" if codes and colour(stream) else text


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[str] = (),
          stream: TextIO = sys.stdout) -> str:
    """Columns padded to their widest cell, two spaces apart, the header bold; a cell is its text
    or ``(text, style)``; the columns named in ``right`` align right."""
    cells: list[list[tuple[str, str | None]]] = [
        [(printable(c[0]), c[1]) if isinstance(c, tuple) else (printable(c), None) for c in row] for row in rows]
    lines: list[list[tuple[str, str | None]]] = [[(h, "bold") for h in header], *cells]
    widths = [max(len(line[i][0]) for line in lines) for i in range(len(header))]
    right = set(right)
    out = []
    for line in lines:
        parts = [styled(text.rjust(w) if name in right else text.ljust(w), style, stream)
                 for (text, style), w, name in zip(line, widths, header)]
        out.append("  ".join(parts).rstrip())
    return "\n".join(out)
