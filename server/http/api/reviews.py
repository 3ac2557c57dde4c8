"""What the DfE filtering and monitoring standard asks a school to keep besides incidents:
the annual review, the check log with its "actions taken", and SWGfL test-filtering runs.

* ``/reviews``: the annual filtering and monitoring review (attendees by role, findings,
  actions, next review date).  Read: DSL, technicians, admins; record: DSL, admins.
* ``/checks``: the filtering check log (``filter_check`` events: the nightly check, a
  technician's ``filter check``) with the actions taken; DSL, technicians, admins read,
  DSL and technicians add an action.
* ``/filter-tests``: a technician starts the SWGfL test on a device, which opens
  ``SWGFL_DOMAIN`` (that site only) for ``SWGFL_MINUTES`` through the device's own override
  (the ``allow`` cmd, logged by the device like any override), runs the test in the
  device's browser, and records the result here.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import Field

from agent.protocol import encode
from agent.protocol import topic as make_topic

from ...reports.data import check_row
from .. import state
from ..auth import User, require
from . import API, RequestBody

PUBLIC: frozenset = frozenset()
SWGFL_DOMAIN = "testfiltering.com"
SWGFL_MINUTES = 10
ROLES_AT_REVIEW = ("headteacher", "dsl", "deputy-dsl", "governor", "senior-leader", "technician", "it-provider",
                   "other")
TEST_RESULTS = ("pass", "fail", "partial")


class Attendee(RequestBody):
    name: str = Field(min_length=1, max_length=120)
    role: Literal[ROLES_AT_REVIEW]  # type: ignore[valid-type]


class ReviewBody(RequestBody):
    held_on: date
    attendees: list[Attendee] = Field(min_length=1, max_length=30)
    findings: str = Field(min_length=1, max_length=8000)
    actions: str = Field(min_length=1, max_length=8000)
    next_review: date


class ActionBody(RequestBody):
    text: str = Field(min_length=1, max_length=4000)


class TestStartBody(RequestBody):
    device: str = Field(min_length=1, max_length=64)


class TestResultBody(RequestBody):
    result: Literal[TEST_RESULTS]  # type: ignore[valid-type]
    details: str = Field(default="", max_length=4000)


def add_review(request: Request, user: User, body: ReviewBody, via: str) -> dict:
    if body.next_review <= body.held_on:
        raise HTTPException(400, "next_review: must be after the review itself (the DfE asks for one a year)")
    store = state.store(request)
    review = store.add_review(site=state.school_site(request), held_on=body.held_on.isoformat(),
                              attendees=[a.model_dump() for a in body.attendees], findings=body.findings.strip(),
                              actions=body.actions.strip(), next_review=body.next_review.isoformat(),
                              recorded_by=user.username)
    store.audit(user.username, "review.add", review["id"], {"via": via, "held_on": review["held_on"]}, site=user.site)
    return review


def check_log(request: Request, limit: int = 200) -> list[dict]:
    """The check log, newest first: each check's summary (reports.data.check_row) and its actions."""
    store = state.store(request)
    site = state.school_site(request)
    rows = store.filter_checks(site, limit=limit)
    actions = store.check_actions_for(site, [r["id"] for r in rows])
    return [{"id": r["id"], **check_row(r), "actions": actions.get(r["id"], [])} for r in rows]


def start_test(request: Request, user: User, device: str, via: str) -> dict:
    """Open the SWGfL test site on *device* for 10 minutes (that site only) and record the run."""
    tree = state.tree(request)
    room = next((room_id for room_id, room in (tree.rooms.items() if tree is not None else ())
                 if any(d.id == device for d in room.devices)), None)
    if room is None:
        raise HTTPException(404, f"device {device[:64]!r} is not in the live config")
    publisher = request.app.state.publisher
    if publisher is None:
        raise HTTPException(503, "not connected to the broker: the device cannot be told to open the test site")
    cmd = {"cmd": "allow", "domain": SWGFL_DOMAIN, "minutes": SWGFL_MINUTES, "by": user.username,
           "reason": "SWGfL test filtering run"}
    try:
        publisher(make_topic(state.topic_prefix(request.app), tree.site.site, room, device, "cmd"), encode(cmd), 1)
    except Exception:  # noqa: BLE001 - tell the technician, keep serving
        raise HTTPException(503, "the command could not be sent to the broker") from None
    store = state.store(request)
    run = store.start_filter_test(site=state.school_site(request), room=room, device=device, domain=SWGFL_DOMAIN,
                                  started_by=user.username)
    store.audit(user.username, "filter_test.start", run["id"], {"via": via, "device": device,
                                                                "domain": SWGFL_DOMAIN, "minutes": SWGFL_MINUTES},
                site=user.site)
    return {**run, "cmd": cmd, "open": f"https://{SWGFL_DOMAIN}/"}


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["reviews"])
    readers = require("dsl", "technician", "admin")
    reviewers = require("dsl", "admin")
    checkers = require("dsl", "technician")
    tech = require("technician")

    @r.get("/reviews")
    def reviews(request: Request, user: User = Depends(readers)) -> list[dict]:
        return state.store(request).list_reviews(state.school_site(request))

    @r.post("/reviews", status_code=201)
    def new_review(body: ReviewBody, request: Request, user: User = Depends(reviewers)) -> dict:
        return add_review(request, user, body, "api")

    @r.get("/checks")
    def checks(request: Request, user: User = Depends(readers), limit: int = Query(200, ge=1, le=2000)):
        return {"checks": check_log(request, limit),
                "tests": state.store(request).list_filter_tests(state.school_site(request), limit=limit)}

    @r.post("/checks/{check_id}/actions", status_code=201)
    def check_action(check_id: str, body: ActionBody, request: Request, user: User = Depends(checkers)) -> dict:
        store = state.store(request)
        site = state.school_site(request)
        if len(check_id) > 64 or not store.is_check(site, check_id):
            raise HTTPException(404, f"check {check_id[:64]!r} not found")
        action = store.add_check_action(site=site, check_id=check_id, actor=user.username, text=body.text.strip())
        store.audit(user.username, "check.action", check_id, {"via": "api"}, site=user.site)
        return action

    @r.post("/filter-tests", status_code=201)
    def new_test(body: TestStartBody, request: Request, user: User = Depends(tech)) -> dict:
        return start_test(request, user, body.device, "api")

    @r.post("/filter-tests/{test_id}/result")
    def test_result(test_id: str, body: TestResultBody, request: Request, user: User = Depends(tech)) -> dict:
        store = state.store(request)
        if not store.record_filter_test(test_id[:64], state.school_site(request), actor=user.username,
                                        result=body.result, details=body.details.strip() or None):
            raise HTTPException(404, f"test run {test_id[:64]!r} not found")
        store.audit(user.username, "filter_test.result", test_id[:64], {"via": "api", "result": body.result},
                    site=user.site)
        return {"id": test_id, "result": body.result}

    return r
