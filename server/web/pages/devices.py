"""The technician's device list: every device of the school's live tree plus any of the
school's the registry knows, online/offline/dark, agent and config versions, enrolled or not."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ...http import state
from ...http.auth import User
from .base import page, render

PUBLIC: frozenset = frozenset()


def device_rows(request: Request) -> list[dict]:
    """Every device of the live tree plus any the registry knows: online/offline/dark, versions."""
    tree = state.tree(request)
    site = state.site(request)
    store = state.store(request)
    known = {d["id"]: d for d in store.list_devices(site=site)}
    dark = {a["device"] for a in store.list_device_alerts(open_only=True, site=site) if a.get("kind") == "dark"}
    rows = []
    ids = []
    if tree is not None:
        for room in sorted(tree.rooms.values(), key=lambda r: r.room):
            for d in room.devices:
                ids.append((d.id, room.room, d.seat))
    in_tree = {i for i, _, _ in ids}
    ids += [(i, d.get("room"), None) for i, d in sorted(known.items()) if i not in in_tree]
    live = state.rollouts(request).current(site) if getattr(request.app.state, "rollouts", None) else None
    for device_id, room, seat in ids:
        d = known.get(device_id, {})
        status = "dark" if device_id in dark else (d.get("status") or "unknown")
        rows.append({"id": device_id, "room": room, "seat": seat, "state": status,
                     "agent_version": d.get("agent_version"), "config_version": d.get("config_version"),
                     "config_current": bool(live and d.get("config_version") == live["version"]),
                     "last_seen": d.get("last_seen"), "enrolled": bool(d.get("enrolled_at")),
                     "in_config": device_id in in_tree})
    return rows


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    tech = page("technician", "admin")

    @r.get("/devices")
    def devices(request: Request, user: User = Depends(tech)):
        return render(request, "devices.html", devices=device_rows(request))

    return r
