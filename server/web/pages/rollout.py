"""The rollout pages (technicians): what version runs where, publish the server's config
folder, roll back one step, and the audit of every rollout with its diff; each for the
school the session acts in (its own config tree and versions).

The work is server/rollout.py's; a refused publish shows its ``file:line`` problems on
the page with the status the refusal carries.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Form, Request

from ...http import state
from ...http.auth import User
from ...rollout import RolloutError, read_files
from .base import page, render

PUBLIC: frozenset = frozenset()


def _rollout_page(request: Request, *, errors=None, flash=None, flash_kind="ok", status=200):
    ro = state.rollouts(request)
    site = state.site(request)
    return render(request, "rollout.html", http_status=status, state=ro.status(site), history=ro.history(20, site),
                  config_dir=_config_dir(request), errors=errors, flash=flash, flash_kind=flash_kind)


def _config_dir(request: Request) -> str | None:
    """This school's config folder on the server (``serve --config``), if it was given one."""
    return request.app.state.config_folders.get(state.site(request))


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    tech = page("technician", "admin")

    @r.get("/rollout")
    def rollout_page(request: Request, user: User = Depends(tech)):
        return _rollout_page(request)

    @r.post("/rollout/publish")
    def rollout_publish(request: Request, why: str = Form("", max_length=2000), user: User = Depends(tech)):
        config_dir = _config_dir(request)
        if not config_dir:
            return _rollout_page(request, errors=["This server has no config folder set (serve --config DIR); "
                                                  "publish with `classroom-server config publish DIR`."], status=400)
        try:
            files = read_files(config_dir)
            done = state.rollouts(request).publish(files, user.username, why, name=Path(config_dir).name or "config",
                                                   site=user.site)
        except RolloutError as exc:
            return _rollout_page(request, errors=exc.errors, status=exc.status)
        return _rollout_page(request, flash=f"Published version {done.version}; {done.notified} devices told.")

    @r.post("/rollout/rollback")
    def rollout_rollback(request: Request, why: str = Form("", max_length=2000), user: User = Depends(tech)):
        try:
            done = state.rollouts(request).rollback(user.username, why, site=user.site)
        except RolloutError as exc:
            return _rollout_page(request, errors=exc.errors, status=exc.status)
        return _rollout_page(request, flash=f"Rolled back to version {done.version}; {done.notified} devices told.")

    @r.get("/rollout/audit")
    def rollout_audit(request: Request, user: User = Depends(tech)):
        ro = state.rollouts(request)
        entries = [{**row, "diff": ro.diff(row["previous"], row["version"], user.site)}
                   for row in ro.history(50, user.site)]
        return render(request, "rollout_audit.html", entries=entries)

    return r
