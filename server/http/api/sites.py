"""Schools over the API: the site switcher, and the trust level's totals and health.

``POST /site {"site"}`` makes the session act in another of the caller's schools (or the
trust level, ``*``); every other route then works in that school only.  ``GET
/trust/health`` is the trust level's one view: per school, devices known, online and
dark, incidents raised (a count), and which config version is live on how many devices;
never a pupil's record, a room, a device id or an incident.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from .. import state
from ..auth import User, choose_site, logged_in, require
from . import API, RequestBody

PUBLIC: frozenset = frozenset()


class SiteBody(RequestBody):
    site: str = Field(max_length=64)


def trust_health(request: Request) -> list[dict]:
    """One row per school the collector serves (or has records of): counts only."""
    store = state.store(request)
    health = store.site_health()
    sites = state.sites(request)
    rollouts = state.rollouts(request)
    out = []
    for site in sorted(set(sites.ids()) | set(health)):
        tree = sites.tree(site)
        counts = health.get(site, {"known": 0, "online": 0, "dark": 0, "incidents": 0})
        live = rollouts.status(site)
        out.append({"site": site, "school": tree.site.school if tree is not None else None,
                    "devices": len(tree.device_ids()) if tree is not None else counts["known"],
                    "known": counts["known"], "online": counts["online"],
                    "offline": max(counts["known"] - counts["online"], 0), "dark": counts["dark"],
                    "incidents": counts["incidents"], "config_version": live.get("live"),
                    "config": live.get("counts") or {}})
    return out


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["sites"])

    @r.post("/site")
    def switch_site(body: SiteBody, request: Request, user: User = Depends(logged_in)) -> dict:
        return choose_site(request, user, body.site).to_dict()

    @r.get("/trust/health")
    def health(request: Request, user: User = Depends(require("trust"))) -> list[dict]:
        return trust_health(request)

    return r
