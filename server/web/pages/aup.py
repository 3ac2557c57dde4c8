"""Acceptable use on the dashboard (DSL, admins): who logged in this term and has not
accepted the rules yet, and who has (server/http/api/aup.py ``aup_status``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ...http.api.aup import aup_status
from ...http.auth import User
from .base import page, render

PUBLIC: frozenset = frozenset()


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get("/aup")
    def aup_page(request: Request, user: User = Depends(page("dsl", "admin"))):
        return render(request, "aup.html", s=aup_status(request))

    return r
