"""The dashboard's Jinja2 environment (templates/ and static/ next to this module).

Autoescaping is on for every template: device ids, domains and notes all come from
outside and must never become markup.  The ``ts`` filter is the weekly report's
(server/reports/render.py owns the report's own environment and template), so a time
reads the same on every page: in the school's time zone, which ``render`` puts in every
page's context as ``tz`` (pages/base.py).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jinja2

from ..reports.render import ts_filter

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"


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
