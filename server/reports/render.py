"""Weekly reports, the presentation: the report as a self-contained HTML page with an
inline SVG bar chart, and the denied/blocked list as CSV.

The SVG is rendered here (no JS library, no CDN): the same page is shown on the
dashboard, written to the reports folder and sent as an e-mail attachment.  This module
owns its Jinja2 environment and template (``templates/report_weekly.html``) so the
report does not depend on the dashboard; the dashboard uses ``render_html(links=True)``
and borrows ``ts_filter``, the one timestamp format of both: the school's own time zone
(server/localtime.py), never UTC.  The CSV keeps RFC 3339 UTC (it is data for a
spreadsheet or a script, and a ``Z`` time cannot be misread).  Autoescaping is on: room
names and domains come from outside and must never become markup.
"""

from __future__ import annotations

import functools
from html import escape
from pathlib import Path

import jinja2

from ..localtime import local_ts
from ..safecsv import to_csv
from .data import Report

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


@jinja2.pass_context
def ts_filter(context, value, seconds: bool = False) -> str:
    """``{{ value | ts }}``: in the ``tz`` the template was rendered with."""
    return local_ts(value, context.get("tz"), seconds=seconds)


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(["html", "xml"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ts"] = ts_filter
    return env


def svg_bar_chart(items: list[tuple[str, int]], *, title: str, width: int = 640, bar: int = 22) -> str:
    """A horizontal bar chart as inline SVG (server-side, accessible: role=img + title)."""
    label_w, pad, value_w = 160, 6, 60
    height = max(1, len(items)) * (bar + pad) + pad
    top = max((v for _, v in items), default=0) or 1
    span = width - label_w - value_w
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
           f'width="100%" preserveAspectRatio="xMinYMin meet" aria-labelledby="chart-title">',
           f'<title id="chart-title">{escape(title)}</title>']
    if not items:
        out.append(f'<text x="{pad}" y="{bar}" font-size="14">No blocked attempts this week.</text>')
    for i, (label, value) in enumerate(items):
        y = pad + i * (bar + pad)
        w = max(1, round(span * value / top)) if value else 0
        out.append(f'<g class="bar"><text x="{label_w - pad}" y="{y + bar * 0.7:.1f}" text-anchor="end" '
                   f'font-size="13">{escape(label)}</text>'
                   f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar}" fill="#2f6f9f" rx="3">'
                   f'<title>{escape(label)}: {value}</title></rect>'
                   f'<text x="{label_w + w + pad}" y="{y + bar * 0.7:.1f}" font-size="13" '
                   f'class="value">{value}</text></g>')
    out.append("</svg>")
    return "".join(out)


def chart(report: Report) -> str:
    items = [(f"{r['room']} ({r['key_stage']})", r["attempts"]) for r in report.by_room]
    return svg_bar_chart(items, title=f"Blocked attempts per room and key stage, week {report.week.key}")


def render_html(report: Report, *, links: bool = False, propose_token: str | None = None) -> str:
    """A self-contained HTML page (inline CSS and SVG) for the browser, the file and e-mail;
    *links*: add the dashboard's navigation (previous week, CSV download); *propose_token*
    (a technician's CSRF token on the dashboard): a "propose allowing" button by each
    over-blocking candidate, which files an allowlist change for the DSL (server/allowlist.py)."""
    return environment().get_template("report_weekly.html").render(r=report, chart=chart(report), links=links,
                                                                   tz=report.week.tz, propose_token=propose_token)


CSV_FIELDS = ["week", "room", "key_stage", "domain", "attempts", "devices", "first_seen", "last_seen"]


def render_csv(report: Report) -> str:
    """The denied/blocked list, one row per room, key stage and domain (server/safecsv.py
    neutralises every cell: rooms, key stages and domains all come from outside)."""
    return to_csv(CSV_FIELDS, ([report.week.key, b["room"], b["key_stage"], b["domain"], b["attempts"], b["devices"],
                                b["first"], b["last"]] for b in report.blocked))
