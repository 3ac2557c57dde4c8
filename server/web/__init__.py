"""The staff web dashboard (HTML pages, live alerts) and the rollout/report HTTP API.

``install(app)`` wires everything into server-core's FastAPI app: the page and API
routers, ``/static``, the live broadcaster (fed by ingest's listeners) and the
``Rollouts`` service on ``app.state.rollouts``.
"""

from __future__ import annotations

from .routes import install

__all__ = ["install"]
