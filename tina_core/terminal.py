"""Text from files, on its way to a terminal: shown, never obeyed.

Run names, reward keys, a trackio run's name, a CSV's headers, a failure's reason: they come from
files, and ``tina import`` reads files other people made by design. A terminal obeys the control
characters inside such text: ``ESC ] 0 ; ... BEL`` sets its title, OSC 52 writes the clipboard,
``ESC [ 2 J`` clears the screen, a newline starts a row of its own. Every text output (the CLI's
text forms, the report's text, Markdown and CSV, the cockpit) passes what it shows of such text
through ``printable`` (or ``shown``, for a whole object) where it renders it. The files, the index
and ``--json`` (whose encoder already escapes control characters) keep the text as it is.

Light: the standard library only.
"""

from __future__ import annotations

import re
from typing import Any

# C0 and C1 controls and DEL; the Unicode line and paragraph separators; the bidirectional
# overrides and isolates, which reorder what a terminal shows ("Trojan Source").
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _written_out(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def printable(text: Any) -> str:
    """``text`` (anything, as its ``str``) with every control character written out as Python
    writes it (ESC as the four characters ``\\x1b``, a newline as ``\\n``): nothing in it acts on a
    terminal or starts a line of its own. Text without one comes back unchanged."""
    s = text if isinstance(text, str) else str(text)
    return _CONTROL.sub(_written_out, s) if _CONTROL.search(s) else s


def shown(obj: Any) -> Any:
    """A copy of a JSON-like ``obj`` (a run object, a report) with every string in it, keys
    included, ``printable``; numbers and the rest as they are. For a renderer that formats many of
    its fields: one call where it starts, instead of one per field."""
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {shown(k): shown(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [shown(v) for v in obj] if isinstance(obj, list) else tuple(shown(v) for v in obj)
    return obj


def markdown_cell(text: Any) -> str:
    """``printable`` text that stays in its Markdown table cell: a ``|`` in it would end the cell
    (and a newline the row), so a name could forge columns or rows."""
    return printable(text).replace("|", "\\|")
