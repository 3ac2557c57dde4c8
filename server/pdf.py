"""THE PDF writer of the collector: the incident chronologies (server/exports.py) and the
governors' term report (server/reports/term.py) are laid out with ``Document`` here, on fpdf2.

A plain, printable A4 document: a title, headings, paragraphs, label/value lines and
tables with a header row that repeats on each page, page numbers in the footer.  Text is
set in DejaVu Sans when the system has it (Debian's fonts-dejavu-core: every character a
name or a note may hold); otherwise in the PDF core font, with the characters it cannot
show replaced, so a PDF is always produced.  Text only: no images are ever put in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from fpdf import FPDF
from fpdf.enums import XPos, YPos

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))
REGULAR, BOLD = "DejaVuSans.ttf", "DejaVuSans-Bold.ttf"


def _font_files() -> tuple[Path, Path] | None:
    for folder in FONT_DIRS:
        regular, bold = folder / REGULAR, folder / BOLD
        if regular.is_file() and bold.is_file():
            return regular, bold
    return None


class _Pdf(FPDF):
    footer_text = ""

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(self.family_name, "", 8)
        self.set_text_color(90, 100, 115)
        self.cell(0, 6, f"{self.footer_text}   page {self.page_no()} of {{nb}}", align="C")


class Document:
    """A text-only A4 document.  ``bytes()`` is the finished PDF."""

    def __init__(self, title: str, *, subtitle: str = "", footer: str = "") -> None:
        pdf = _Pdf(format="A4")
        pdf.set_margins(15, 15, 15)
        pdf.set_auto_page_break(True, margin=18)
        fonts = _font_files()
        if fonts is not None:
            pdf.add_font("DejaVu", "", str(fonts[0]))
            pdf.add_font("DejaVu", "B", str(fonts[1]))
            pdf.family_name = "DejaVu"
            self.unicode = True
        else:
            pdf.family_name = "Helvetica"
            self.unicode = False
        pdf.footer_text = self._text(footer)
        pdf.set_title(self._text(title))
        pdf.set_creator("classroom-safety")
        pdf.alias_nb_pages()
        pdf.add_page()
        self.pdf = pdf
        self._font("B", 16)
        self.pdf.multi_cell(0, 8, self._text(title), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        if subtitle:
            self._font("", 9)
            self.pdf.set_text_color(90, 100, 115)
            self.pdf.multi_cell(0, 5, self._text(subtitle), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            self.pdf.set_text_color(0, 0, 0)
        self.pdf.ln(2)

    # ------------------------------------------------------------------ text

    def _text(self, value) -> str:
        text = "" if value is None else str(value)
        if not self.__dict__.get("unicode", True):
            text = text.encode("latin-1", "replace").decode("latin-1")
        return text

    def _font(self, style: str, size: float) -> None:
        self.pdf.set_font(self.pdf.family_name, style, size)

    def heading(self, text: str) -> None:
        self.pdf.ln(3)
        self._font("B", 12)
        self.pdf.multi_cell(0, 7, self._text(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.pdf.set_draw_color(200, 208, 220)
        y = self.pdf.get_y()
        self.pdf.line(self.pdf.l_margin, y, self.pdf.w - self.pdf.r_margin, y)
        self.pdf.ln(1.5)

    def paragraph(self, text: str, *, size: float = 10, muted: bool = False) -> None:
        self._font("", size)
        if muted:
            self.pdf.set_text_color(90, 100, 115)
        self.pdf.multi_cell(0, size * 0.5, self._text(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.pdf.set_text_color(0, 0, 0)
        self.pdf.ln(1)

    def fields(self, pairs: Iterable[tuple[str, object]]) -> None:
        """Label: value lines."""
        for label, value in pairs:
            self._font("B", 10)
            self.pdf.cell(45, 5.5, self._text(label))
            self._font("", 10)
            self.pdf.multi_cell(0, 5.5, self._text(value if value not in (None, "") else "-"),
                                new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def table(self, header: Sequence[str], rows: Iterable[Sequence[object]], widths: Sequence[float] | None = None,
              *, empty: str = "None.") -> None:
        """A table whose header repeats on every page; long cells wrap."""
        rows = [[self._text(c if c is not None else "") for c in row] for row in rows]
        if not rows:
            self.paragraph(empty, muted=True)
            return
        self._font("", 9)
        with self.pdf.table(col_widths=tuple(widths) if widths else None, text_align="LEFT", line_height=4.8,
                            first_row_as_headings=True, repeat_headings=1, padding=1) as table:
            head = table.row()
            for cell in header:
                head.cell(self._text(cell))
            for row in rows:
                line = table.row()
                for cell in row:
                    line.cell(cell)
        self.pdf.ln(2)

    def bytes(self) -> bytes:
        return bytes(self.pdf.output())
