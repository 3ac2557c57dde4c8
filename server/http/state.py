"""What the routes share through ``app.state``, and the accessors they read it with.

``create_app`` (app.py) fills ``app.state`` with: ``store`` (server/store), ``settings``
(app.Settings), ``sites`` (server/sites.Sites: the live ConfigTree of each school; a
rollout replaces one), ``tree`` (the live tree when the collector serves one school, else
None: for code that is not acting for a staff member of one school), ``rollouts``
(server/rollout.Rollouts), ``oidc`` (server/http/oidc.OidcLogin or None), ``publisher`` (``(topic, payload_bytes, qos) ->
None`` that reaches the broker, or None), ``metrics`` (server.ingest.Metrics), ``ingest``
(the Ingest worker or None), ``login_throttle`` (throttle.LoginThrottle) and ``listeners``
(callables ``(kind, topic, data)`` for live updates; serve.py attaches them to ingest) and
``presence`` (server/presence.Presence: the live receivers of each room) and ``holds``
(server/holds.Holds: the DSL's holds, re-sent to a device when it comes online).
The dashboard adds ``live`` (server/web/live.py).
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from agent.protocol import DEFAULT_PREFIX

from ..rollout import Rollouts
from ..store import Store


def store(request: Request) -> Store:
    return request.app.state.store


def sites(request: Request):
    """Every school's live tree (server/sites.Sites)."""
    return request.app.state.sites


def site(request: Request) -> str | None:
    """The site the logged-in staff member acts in (set by ``auth.require``), or None."""
    user = getattr(request.state, "user", None)
    return user.site if user is not None else None


def tree(request: Request):
    """The live config tree of the school the staff member acts in, or None (no tree
    loaded or published for it yet, the trust level, or no staff member)."""
    return request.app.state.sites.tree(site(request))


def rollouts(request: Request) -> Rollouts:
    return request.app.state.rollouts


def topic_prefix(app: FastAPI) -> str:
    """The MQTT topic prefix: ``--prefix``, else the live trees' (one broker prefix for
    every school of a collector), else the protocol default."""
    settings = getattr(app.state, "settings", None)
    if settings is not None and getattr(settings, "prefix", None):
        return settings.prefix
    live = app.state.sites.trees() if getattr(app.state, "sites", None) is not None else []
    return live[0].site.broker.prefix if live else DEFAULT_PREFIX


def site_and_timezone(request: Request) -> tuple[str, str]:
    """The acting site and its school time zone (Europe/London before its tree is known)."""
    live = tree(request)
    return (site(request) or "", live.site.timezone if live is not None else "Europe/London")


def live(app: FastAPI):
    """The dashboard's broadcaster (server/web/live.py), or None without the dashboard."""
    return getattr(app.state, "live", None)


def presence(request: Request):
    """Who is watching each room, per school (server/presence.py)."""
    return request.app.state.presence


def school_site(request: Request) -> str:
    """The site (school) this request's records belong to: every record route reads and
    writes only this site's rows ("" before a config tree is loaded, which matches none)."""
    return site_and_timezone(request)[0]


def event_notices(request: Request):
    """The guard / filter-check / adult-concern messages (server/notify/events.py), or None
    when the collector runs without ``--notify``."""
    return getattr(request.app.state, "event_notices", None)


def holds(request: Request):
    """The DSL's holds on devices (server/holds.py)."""
    return request.app.state.holds
