"""The JSON API (``/api/v1``), one router module per area.

Each module has ``router() -> APIRouter`` and ``PUBLIC``, the (method, path) pairs of its
routes anyone may call; every other route states its roles with
``Depends(require(...))`` (server/http/auth.py).  server/http/app.py includes the routers
and unions their ``PUBLIC`` sets; tests/test_api_roles.py walks every route and checks
each refuses every other role and the unauthenticated.

login.py (sessions), incidents.py (the DSL's records), alerts.py (ack/clear commands to
a device), commands.py (a teacher's room commands: Eyes on me, lock, allow, message), devices.py (registry, enrolment), users.py (staff accounts), audit.py,
config.py (rollout, and devices fetching their config), reports.py (weekly report),
ops.py (health, metrics), deliveries.py (escalation e-mails and webhooks, every attempt),
unblock.py (pupils' "Ask my teacher" from the block page, and the teacher's answer).
timetable.py (the imported timetable, today's cover, who is teaching in each room now).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

API = "/api/v1"


class RequestBody(BaseModel):
    """A JSON body: unknown fields are refused (422), never silently ignored."""

    model_config = ConfigDict(extra="forbid")
