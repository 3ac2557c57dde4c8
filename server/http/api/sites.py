"""Schools over the API: the site switcher, and the trust level's totals and health.

``POST /site {"site"}`` makes the session act in another of the caller's schools (or the
trust level, ``*``); every other route then works in that school only.  ``GET
/trust/health`` is the trust level's one view: per school, devices known, online and
dark, incidents raised (a count), the office board's totals (alerts open now, rooms with
no live receiver), and which config version is live on how many devices; never a pupil's
record, a room, a device id or an incident.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from ...store import iso

from .. import state
from ..auth import User, choose_site, logged_in, require
from . import API, RequestBody

PUBLIC: frozenset = frozenset()
OPEN_ALERT_HOURS = 24  # as the office board (server/web/pages/office.py)


class SiteBody(RequestBody):
    site: str = Field(max_length=64)


def trust_health(request: Request) -> list[dict]:
    """One row per school the collector serves (or has records of): counts only."""
    store = state.store(request)
    health = store.site_health(open_since=iso(datetime.now(timezone.utc) - timedelta(hours=OPEN_ALERT_HOURS)))
    sites = state.sites(request)
    rollouts = state.rollouts(request)
    presence = state.presence(request)
    out = []
    for site in sorted(set(sites.ids()) | set(health)):
        tree = sites.tree(site)
        counts = health.get(site, {"known": 0, "online": 0, "dark": 0, "incidents": 0, "open_alerts": 0})
        live = rollouts.status(site)
        watched = presence.receivers(site)
        out.append({"site": site, "school": tree.site.school if tree is not None else None,
                    "devices": len(tree.device_ids()) if tree is not None else counts["known"],
                    "known": counts["known"], "online": counts["online"],
                    "offline": max(counts["known"] - counts["online"], 0), "dark": counts["dark"],
                    "incidents": counts["incidents"], "open_alerts": counts["open_alerts"],
                    "unwatched_rooms": sum(1 for room in tree.rooms if not watched.get(room)) if tree else None,
                    "config_version": live.get("live"), "config": live.get("counts") or {}})
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
