"""Cover: the office says who is teaching in a room instead, so that room's alerts reach them.

``/cover`` (office, DSL, admin) lists the cover entered for a day (today by default, in
school time) and who the timetable has in each room now; a form adds cover (room, member
of staff, date, from, to, a note) and each entry has a Remove button.  During the cover
the member of staff gets the room on their dashboard, its live alerts and its room
commands, like its ``alert_staff`` (server/timetable/now.py); their alert client needs the
broker's ACL (``broker-config --db``: docs/broker.md).  Every change is in the audit log.
Forms post and redirect back (303), so a reload never posts twice.
"""

from __future__ import annotations

from datetime import date
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import RedirectResponse

from ...http import state
from ...http.auth import User
from ...timetable.now import parse_clock, school_now, staff_now
from .base import page, render

PUBLIC: frozenset = frozenset()


def _day(value: str | None, tree) -> str:
    if not value:
        return school_now(tree).date().isoformat()
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise HTTPException(422, f"day: {value[:20]!r} is not a date (YYYY-MM-DD)") from None


def _page(request: Request, user: User, day: str, error: str | None = None, status: int = 200, form=None):
    tree = state.tree(request)
    store = state.store(request)
    now = school_now(tree)
    rooms = [{"room": k, "name": v.name or k, "now": staff_now(store, tree, k), "alert_staff": list(v.alert_staff)}
             for k, v in sorted(tree.rooms.items())]
    staff = [u for u in store.list_users() if not u["disabled"]]
    default = {"room": "", "staff": "", "day": day, "start": f"{now.hour:02d}:{now.minute:02d}",
               "end": tree.site.school_hours.end, "note": ""}
    return render(request, "cover.html", http_status=status, day=day, covers=store.covers(tree.site.site, day),
                  rooms=rooms, staff=staff, error=error, form={**default, **(form or {})},
                  last_import=store.last_timetable_import(tree.site.site))


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    office = page("office", "dsl", "admin")

    def tree_or_503(request: Request):
        tree = state.tree(request)
        if tree is None:
            raise HTTPException(503, "no config loaded yet")
        return tree

    @r.get("/cover")
    def cover(request: Request, day: str | None = Query(None, max_length=20), user: User = Depends(office)):
        tree = tree_or_503(request)
        return _page(request, user, _day(day, tree))

    @r.post("/cover")
    def cover_add(request: Request, room: str = Form("", max_length=64), staff: str = Form("", max_length=64),
                  day: str = Form("", max_length=20), start: str = Form("", max_length=10),
                  end: str = Form("", max_length=10), note: str = Form("", max_length=200),
                  user: User = Depends(office)):
        tree = tree_or_503(request)
        the_day = _day(day, tree)
        form = {"room": room, "staff": staff, "day": the_day, "start": start, "end": end, "note": note}
        store = state.store(request)
        begin, finish = parse_clock(start), parse_clock(end)
        account = store.get_user(staff) if staff else None
        error = None
        if room not in tree.rooms:
            error = "room: choose a room"
        elif account is None or account["disabled"]:
            error = "staff: choose a member of staff"
        elif begin is None or finish is None:
            error = "from/to: give times as HH:MM"
        elif finish <= begin:
            error = f"to: {finish} is not after {begin}"
        if error:
            return _page(request, user, the_day, error=error, status=422, form=form)
        store.add_cover(tree.site.site, the_day, begin, finish, room, staff, by=user.username,
                        note=" ".join(note.split()) or None)
        return RedirectResponse(f"/cover?day={quote(the_day)}", status_code=303)

    @r.post("/cover/{cover_id}/remove")
    def cover_remove(cover_id: str, request: Request, day: str = Form("", max_length=20),
                     user: User = Depends(office)):
        tree = tree_or_503(request)
        if not state.store(request).remove_cover(cover_id[:64], tree.site.site, by=user.username):
            raise HTTPException(404, "no such cover")
        return RedirectResponse(f"/cover?day={quote(_day(day, tree))}", status_code=303)

    return r
