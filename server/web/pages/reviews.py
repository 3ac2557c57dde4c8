"""The annual filtering and monitoring review record (/reviews) and the filtering check log
with its actions and the SWGfL test runs (/checks).  The steps are the API's
(server/http/api/reviews.py)."""

from __future__ import annotations


from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from ...http import state
from ...http.api.reviews import (ROLES_AT_REVIEW, SWGFL_DOMAIN, SWGFL_MINUTES, TEST_RESULTS, ReviewBody, add_review,
                                 check_log, start_test)
from ...http.auth import User
from .base import page, render

PUBLIC: frozenset = frozenset()


def _reviews_page(request: Request, *, error: str | None = None, status: int = 200):
    return render(request, "reviews.html", http_status=status, error=error, roles=ROLES_AT_REVIEW,
                  reviews=state.store(request).list_reviews(state.school_site(request)))


def _checks_page(request: Request, *, error: str | None = None, started: dict | None = None, status: int = 200):
    tree = state.tree(request)
    return render(request, "checks.html", http_status=status, error=error, started=started, checks=check_log(request),
                  tests=state.store(request).list_filter_tests(state.school_site(request)),
                  devices=tree.device_ids() if tree is not None else [], swgfl=SWGFL_DOMAIN, minutes=SWGFL_MINUTES,
                  results=TEST_RESULTS)


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    readers = page("dsl", "technician", "admin")
    reviewers = page("dsl", "admin")
    checkers = page("dsl", "technician")
    tech = page("technician")

    @r.get("/reviews")
    def reviews_page(request: Request, user: User = Depends(readers)):
        return _reviews_page(request)

    @r.post("/reviews")
    def reviews_post(request: Request, held_on: str = Form("", max_length=10),
                     attendee_name: list[str] = Form([]), attendee_role: list[str] = Form([]),
                     findings: str = Form("", max_length=8000), actions: str = Form("", max_length=8000),
                     next_review: str = Form("", max_length=10), user: User = Depends(reviewers)):
        attendees = [{"name": n.strip(), "role": role} for n, role in zip(attendee_name, attendee_role) if n.strip()]
        try:
            body = ReviewBody(held_on=held_on, attendees=attendees, findings=findings, actions=actions,
                              next_review=next_review)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return _reviews_page(request, error=f"{where}: {first['msg']}", status=400)
        try:
            add_review(request, user, body, "web")
        except HTTPException as exc:
            return _reviews_page(request, error=str(exc.detail), status=exc.status_code)
        return RedirectResponse("/reviews", status_code=303)

    @r.get("/checks")
    def checks_page(request: Request, user: User = Depends(readers)):
        return _checks_page(request)

    @r.post("/checks/test")
    def checks_test(request: Request, device: str = Form("", max_length=64), user: User = Depends(tech)):
        try:
            run = start_test(request, user, device, "web")
        except HTTPException as exc:
            return _checks_page(request, error=str(exc.detail), status=exc.status_code)
        return _checks_page(request, started=run)

    @r.post("/checks/test/{test_id}")
    def checks_test_result(test_id: str, request: Request, result: str = Form("", max_length=10),
                           details: str = Form("", max_length=4000), user: User = Depends(tech)):
        if result not in TEST_RESULTS:
            return _checks_page(request, error=f"result: one of {', '.join(TEST_RESULTS)}", status=400)
        store = state.store(request)
        if not store.record_filter_test(test_id[:64], state.school_site(request), actor=user.username, result=result,
                                        details=details.strip() or None):
            raise HTTPException(404, f"test run {test_id[:64]!r} not found")
        store.audit(user.username, "filter_test.result", test_id[:64], {"via": "web", "result": result}, site=user.site)
        return RedirectResponse("/checks", status_code=303)

    @r.post("/checks/{check_id}/action")
    def checks_action(check_id: str, request: Request, text: str = Form("", max_length=4000),
                      user: User = Depends(checkers)):
        store = state.store(request)
        site = state.school_site(request)
        if len(check_id) > 64 or not store.is_check(site, check_id):
            raise HTTPException(404, f"check {check_id[:64]!r} not found")
        if not text.strip():
            return _checks_page(request, error="text: say what was done", status=400)
        store.add_check_action(site=site, check_id=check_id, actor=user.username, text=text.strip())
        store.audit(user.username, "check.action", check_id, {"via": "web"}, site=user.site)
        return RedirectResponse("/checks", status_code=303)

    return r
