"""Risk lists: which high-risk category, if any, a blocked name belongs to.

site.yaml's ``filtering.risk_lists`` names categories (self-harm, adult content, extremism,
weapons, drugs, gambling, the school's own), each a set of domains (subdomains included)
and keywords (matched anywhere inside the name).  The filter tags each ``blocked`` event
with the first list that matches, as ``category``; the collector counts attempts by
category in the weekly report and tells the DSL at once about a list with ``notify``
(server/notify/risk.py).  The lists are examples a school extends: the school's upstream
filter stays the filter of record, and a name on no list is blocked all the same.

``RiskMatcher`` is built once per config (on the queue thread) and asked once per blocked
event, never per DNS query: a suffix walk over a set plus one compiled regular expression
per list, so even thousands of entries cost microseconds.
"""

from __future__ import annotations

import re
from typing import Iterable

__all__ = ["RiskMatcher"]


class RiskMatcher:
    """``category(name)``: the id of the first risk list *name* is on, or None."""

    def __init__(self, lists: Iterable = ()):
        # (id, domains, keyword regex or None) in the order the school wrote them: first wins.
        self._lists: list[tuple[str, frozenset[str], re.Pattern | None]] = []
        for item in lists:
            words = sorted(set(item.keywords), key=len, reverse=True)
            pattern = re.compile("|".join(re.escape(w) for w in words)) if words else None
            self._lists.append((item.id, frozenset(item.domains), pattern))

    @classmethod
    def from_filtering(cls, filtering) -> "RiskMatcher":
        return cls(getattr(filtering, "risk_lists", None) or ())

    def __bool__(self) -> bool:
        return bool(self._lists)

    @property
    def categories(self) -> list[str]:
        return [cid for cid, _, _ in self._lists]

    def category(self, name: str) -> str | None:
        name = name.lower().rstrip(".")
        labels = name.split(".")
        suffixes = {".".join(labels[i:]) for i in range(len(labels) - 1)}
        for cid, domains, pattern in self._lists:
            if domains and not suffixes.isdisjoint(domains):
                return cid
            if pattern is not None and pattern.search(name):
                return cid
        return None
