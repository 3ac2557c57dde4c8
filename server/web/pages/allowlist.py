"""The allowlist page: proposals waiting for the DSL (approve and publish, or reject), the
technician's proposal form (also reached with one click from the weekly report's
over-blocking candidates), the change log and the override history.  The steps are the
API's (server/http/api/allowlist.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse

from ... import allowlist as al
from ...http import state
from ...http.api.allowlist import decide, override_history, propose
from ...http.auth import User
from .base import page, render

PUBLIC: frozenset = frozenset()


def _page(request: Request, *, error: str | None = None, form: dict | None = None, status: int = 200):
    store = state.store(request)
    site = state.school_site(request)
    tree = state.tree(request)
    changes = store.list_allowlist_changes(site)
    form = {"key_stages": [], "add_domains": "", "remove_domains": "", "reason": "", "source": "proposal",
            **(form or {})}
    return render(request, "allowlist.html", http_status=status, error=error, form=form,
                  pending=[c for c in changes if c["status"] == "proposed"], changes=changes,
                  overrides=override_history(request, 300), key_stages=sorted(tree.profiles) if tree else [])


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    viewers = page("dsl", "technician", "admin")
    tech = page("technician")
    dsl = page("dsl")

    @r.get("/allowlist")
    def allowlist_page(request: Request, user: User = Depends(viewers)):
        return _page(request)

    @r.post("/allowlist/propose")
    def allowlist_propose(request: Request, key_stages: list[str] = Form([]),
                          add_domains: str = Form("", max_length=4000), remove_domains: str = Form("", max_length=4000),
                          reason: str = Form("", max_length=2000), source: str = Form("proposal", max_length=20),
                          user: User = Depends(tech)):
        body = {"kind": "domains", "key_stages": key_stages, "add_domains": add_domains,
                "remove_domains": remove_domains, "reason": reason, "source": source}
        try:
            propose(request, user, body, "web")
        except al.ChangeError as exc:
            return _page(request, error=str(exc), status=400, form={**body, "key_stages": key_stages})
        return RedirectResponse("/allowlist", status_code=303)

    @r.post("/allowlist/{change_id}/decide")
    def allowlist_decide(change_id: str, request: Request, approve: str = Form("0", max_length=1),
                         note: str = Form("", max_length=2000), user: User = Depends(dsl)):
        try:
            decide(request, user, change_id, approve == "1", note, "web")
        except al.ChangeError as exc:
            return _page(request, error=str(exc), status=409)
        return RedirectResponse("/allowlist", status_code=303)

    return r
