"""The Jinja2 environment shared by the dashboard pages and the weekly report file.

Autoescaping is on for every template: device ids, domains and notes all come from
outside and must never become markup.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jinja2

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"


def _short_ts(value) -> str:
    """'2026-11-24T09:08:18.891Z' -> '24 Nov 09:08 UTC' style, tolerant of None/garbage."""
    if not value or not isinstance(value, str) or len(value) < 16:
        return value or ""
    return f"{value[:10]} {value[11:16]} UTC"


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(["html", "xml"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ts"] = _short_ts
    return env
