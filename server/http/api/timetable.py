"""The school timetable and today's cover over the API (the office, the DSL, admins).

Read only: the timetable comes in through ``classroom-server timetable import FILE``
(server/timetable/cli.py), which checks every row first, and cover through the office's
``/cover`` page.  ``now`` says who is teaching in each room at this moment (timetable or
cover, with the changeover margin: server/timetable/now.py), the staff who get that room's
alerts besides its ``alert_staff``.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from ...timetable.now import school_now, staff_now
from .. import state
from ..auth import User, require
from . import API

PUBLIC: frozenset = frozenset()


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["timetable"])
    readers = require("office", "dsl", "admin")

    @r.get("/timetable")
    def timetable(request: Request, room: str | None = Query(None, max_length=64),
                  staff: str | None = Query(None, max_length=64), user: User = Depends(readers)) -> dict:
        tree = state.tree(request)
        if tree is None:
            raise HTTPException(503, "no config loaded yet")
        store = state.store(request)
        site = tree.site.site
        today = school_now(tree).date().isoformat()
        return {"site": site, "import": store.last_timetable_import(site),
                "lessons": store.timetable(site, room=room, staff=staff), "cover_today": store.covers(site, today),
                "now": {k: staff_now(store, tree, k) for k in sorted(tree.rooms) if room is None or k == room}}

    return r
