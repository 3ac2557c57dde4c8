"""THE CSV writer of the collector: every CSV the server produces (the weekly blocked list on
the dashboard, the API and in the digest) is written by ``to_csv``.

Cells come from devices (domains, room names, key stages) and staff, and a spreadsheet
runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula (and Excel strips a
leading tab or carriage return first; LibreOffice and Excel also read the full-width and
small-form variants of those characters).  ``neutralise`` makes every such text cell
start with an apostrophe, which spreadsheets show as text and never evaluate.  Numbers are
written as they are: a number cannot be a formula.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Iterable, Sequence

# = + - @, tab and carriage return, and their full-width (FF1D FF0B FF0D FF20) and small-form
# (FE66 FE62 FE63 FE6B) variants.
FORMULA_STARTS = frozenset("=+-@\t\r" "\uff1d\uff0b\uff0d\uff20" "\ufe66\ufe62\ufe63\ufe6b")


def neutralise(value: Any) -> Any:
    """*value* as a cell: text that a spreadsheet would run as a formula gets a leading ``'``."""
    if isinstance(value, str) and value[:1] in FORMULA_STARTS:
        return "'" + value
    return value


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document (RFC 4180 line ends) with every cell neutralised, the header too."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([neutralise(cell) for cell in header])
    for row in rows:
        writer.writerow([neutralise(cell) for cell in row])
    return buf.getvalue()
