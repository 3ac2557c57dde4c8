"""Weekly reports for the DSL and the technician, and the scheduled weekly digest.

* data.py: the school week and the report's numbers (blocked list, over-blocking
  candidates, incidents summary, filtering check log), built from rows the store reads;
* render.py: the report as self-contained HTML with an inline SVG chart, and as CSV;
* digest.py: last week's digest, written on Monday morning once, e-mailed if configured.

The names below are the package's API (the dashboard, the JSON API, ``serve``, tests).
"""

from __future__ import annotations

from .data import TOP_DOMAINS, Report, Week, build, collect, for_role
from .digest import DIGEST_HOUR, DigestScheduler, SmtpConfigError, SmtpSettings, due_week, run_digest, send_email
from .render import CSV_FIELDS, chart, render_csv, render_html, svg_bar_chart

__all__ = ["TOP_DOMAINS", "Report", "Week", "build", "collect", "for_role", "DIGEST_HOUR", "DigestScheduler", "SmtpConfigError",
           "SmtpSettings", "due_week", "run_digest", "send_email", "CSV_FIELDS", "chart", "render_csv", "render_html",
           "svg_bar_chart"]
