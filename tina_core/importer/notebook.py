"""An executed Jupyter notebook (``.ipynb``): the progress table the HF Trainer (and Unsloth's GRPO
notebooks) print as HTML in a cell's output, ``Step``, ``Training Loss`` and the logged names.
The last such table in the notebook is read (a cell run twice prints one table per run), through
importer.table like any other table."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from tina_core.importer import table
from tina_core.importer.records import Read
from tina_core.rundir import TinaError, parse_json


class _Tables(HTMLParser):
    """Every <table> of an HTML fragment as rows of cell texts (header cells included)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def progress_tables(nb: dict) -> list[tuple[int, list[list[str]]]]:
    """(cell index, rows) of every table in the notebook's HTML outputs whose header has a Step
    column, in notebook order."""
    found = []
    for ci, cell in enumerate(nb.get("cells") or []):
        for out in cell.get("outputs") or [] if isinstance(cell, dict) else []:
            html = (out.get("data") or {}).get("text/html") if isinstance(out, dict) else None
            if not html:
                continue
            parser = _Tables()
            parser.feed("".join(html) if isinstance(html, list) else str(html))
            for rows in parser.tables:
                if rows and any(c.strip().lower() == "step" for c in rows[0]):
                    found.append((ci, rows))
    return found


def read(path: Path, run: str | None = None) -> Read:
    try:
        nb = parse_json(path.read_text(encoding="utf-8-sig", errors="replace"))
    except ValueError as e:
        raise TinaError(f"{path}: not a valid notebook ({e})") from None
    tables = progress_tables(nb) if isinstance(nb, dict) else []
    if not tables:
        raise TinaError(f"{path}: no progress table (a Step column) in the notebook's outputs")
    ci, rows = tables[-1]
    detail = f"the last of {len(tables)} progress table(s), in cell {ci}, {len(rows) - 1} rows"
    return table.rows_to_read(f"{path} (cell {ci})", rows[0], rows[1:], "notebook", run, detail, 1, "row")
