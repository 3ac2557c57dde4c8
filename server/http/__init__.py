"""The collector's HTTP side: the JSON API under ``/api/v1`` and the composition of the app.

* app.py: ``create_app(settings)`` and ``Settings``; it builds the FastAPI app, sets up
  what routes share (state.py), includes every API router (api/) and the dashboard
  (server/web), and unions the public routes each router declares;
* auth.py: staff and device authentication, ``require(...)`` role checks, and
  ``attempt_login`` (the one way to log in: throttled and audited);
* throttle.py: the login throttle (per user, per address, fixed memory);
* headers.py, bodylimit.py, csrf.py: the middleware every request passes (security
  headers; 413 before an oversized body is read; same-origin and CSRF token checks);
* state.py: what a route may read from the app (store, tree, rollouts, topic prefix);
* api/: the JSON API, one router module per area.

This file imports nothing: the dashboard's pages import auth.py and state.py, and
create_app imports the dashboard, so a package ``__init__`` that pulled in app.py would
make a cycle.
"""
