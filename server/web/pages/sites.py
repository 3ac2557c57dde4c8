"""Schools on the dashboard: the school chooser and switcher, and the trust overview.

``/schools`` lists the schools (and the trust level) an account belongs to; ``POST /site``
(the header's switcher) makes the session act in another of them.  ``/trust`` is the trust
level's page: each school's totals and health (devices online, offline and dark,
incidents raised, config version coverage), never a pupil's record.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse

from ...http.api.sites import trust_health
from ...http.auth import User, choose_site
from .base import any_page, home_for, page, render

PUBLIC: frozenset = frozenset()


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get("/schools")
    def schools(request: Request, user: User = Depends(any_page)):
        return render(request, "schools.html")

    @r.post("/site")
    def switch(request: Request, site: str = Form("", max_length=64), user: User = Depends(any_page)):
        chosen = choose_site(request, user, site)
        return RedirectResponse(home_for(chosen), status_code=303)

    @r.get("/trust")
    def trust(request: Request, user: User = Depends(page("trust"))):
        return render(request, "trust.html", schools=trust_health(request))

    return r
