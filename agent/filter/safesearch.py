"""Safe search forced at DNS: which names are rewritten to which safe endpoint.

The search engines publish "safe" hostnames and ask networks to answer their normal
names with the safe endpoint's address (Google: forcesafesearch.google.com, Bing:
strict.bing.com, YouTube: restrict[moderate].youtube.com, DuckDuckGo:
safe.duckduckgo.com).  Forcing applies only to an engine the profile allows: a search
engine that is not allowed stays NXDOMAIN like any other domain.

dnsmasq's ``cname=`` cannot point at a name that only the upstream knows, so the agent
resolves the safe endpoint itself (through its own dnsmasq, which forwards only to the
school's upstream) and writes the addresses into a hosts file dnsmasq re-reads on
SIGHUP; the forced names are also made local-only so AAAA/HTTPS questions cannot leak
past the rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rewrite:
    engine: str
    name: str          # the name browsers ask for
    target: str        # the safe endpoint whose addresses answer it
    # Other names under a local-only apex that must keep working (DuckDuckGo assets).
    keep: tuple[str, ...] = ()


_SEARCH = (
    Rewrite("google", "www.google.com", "forcesafesearch.google.com"),
    Rewrite("google", "www.google.co.uk", "forcesafesearch.google.com"),
    Rewrite("bing", "www.bing.com", "strict.bing.com"),
    Rewrite("duckduckgo", "duckduckgo.com", "safe.duckduckgo.com",
            keep=("links.duckduckgo.com", "external-content.duckduckgo.com", "improving.duckduckgo.com")),
    Rewrite("duckduckgo", "www.duckduckgo.com", "safe.duckduckgo.com"),
)
_YOUTUBE_NAMES = ("www.youtube.com", "m.youtube.com", "youtubei.googleapis.com",
                  "youtube.googleapis.com", "www.youtube-nocookie.com")
YOUTUBE_TARGETS = {"strict": "restrict.youtube.com", "moderate": "restrictmoderate.youtube.com"}


# Every name any rewrite forces: under mode upstream every engine is reachable, so all apply.
ALL_NAMES = tuple(r.name for r in _SEARCH) + _YOUTUBE_NAMES


def covered(name: str, domains) -> bool:
    """True if *name* is one of *domains* or a subdomain of one."""
    return any(name == d or name.endswith("." + d) for d in domains)


def rewrites(allowed_domains, safe_search: bool, youtube_restrict: str) -> list[Rewrite]:
    """The rewrites in force for a set of allowed domains (profile + overrides)."""
    out: list[Rewrite] = []
    if safe_search:
        out += [r for r in _SEARCH if covered(r.name, allowed_domains)]
    target = YOUTUBE_TARGETS.get(youtube_restrict)
    if target:
        out += [Rewrite("youtube", n, target) for n in _YOUTUBE_NAMES if covered(n, allowed_domains)]
    return out
