"""For the people running the collector: ``/healthz`` (store and broker) and ``/metrics``
(Prometheus text).  Both are public and say nothing about pupils or staff."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ... import __version__
from .. import state

PUBLIC = frozenset({("GET", "/healthz"), ("GET", "/metrics")})


def router() -> APIRouter:
    r = APIRouter(tags=["ops"])

    @r.get("/healthz")
    def healthz(request: Request) -> JSONResponse:
        store = state.store(request)
        try:
            ok = store.ping()
        except Exception:  # noqa: BLE001
            ok = False
        ingest = request.app.state.ingest
        body = {"ok": ok, "version": __version__, "store": store.dialect,
                "broker": None if ingest is None else ingest.connected.is_set()}
        return JSONResponse(body, status_code=200 if ok else 503)

    @r.get("/metrics", response_class=PlainTextResponse)
    def metrics(request: Request) -> str:
        store = state.store(request)
        ingest = request.app.state.ingest
        devices = store.device_counts()
        metrics = request.app.state.metrics
        # This serve process's worker and its --ingest-workers processes (server/ingest/pool.py).
        worker_depth, workers_connected = metrics.worker_gauges()
        connected = int(bool(ingest and ingest.connected.is_set()))
        gauges = {
            "devices_online": (devices["online"], "devices whose status is online"),
            "devices_known": (devices["known"], "devices in the registry"),
            "device_alerts_open": (devices["alerts_open"], "open technician alerts"),
            "store_queue_depth": (store.queue_depth, "write tasks waiting for the store"),
            "ingest_queue_depth": ((ingest.queue_depth if ingest is not None else 0) + worker_depth,
                                   "MQTT messages received but not yet committed, all of this process's workers"),
            "broker_connected": (connected, "1 if this process's own ingest worker is connected"),
            "ingest_workers_connected": (connected + workers_connected,
                                         "this process's ingest workers connected to the broker"),
        }
        return metrics.render(gauges)

    return r
