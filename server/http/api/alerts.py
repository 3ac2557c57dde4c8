"""Answering an alert from the API: "I'm coming" (ack) and clear, sent to the device.

The command goes to the device's ``cmd`` topic over the collector's broker connection;
the device is the source of truth and answers by publishing the new alert state, which
ingest stores.  Without a broker connection staff are told to use the device's PIN.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, HTTPException, Request

from agent.protocol import encode, topic as make_topic

from .. import state
from ..auth import User, require
from . import API
from .incidents import incident_or_404

log = logging.getLogger(__name__)

PUBLIC: frozenset = frozenset()


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["alerts"])
    responders = require("teacher", "dsl", "admin")

    def command(cmd: str):
        def handler(alert_id: str, request: Request, user: User = Depends(responders)) -> dict:
            incident = incident_or_404(request, alert_id, user)
            publisher = request.app.state.publisher
            if publisher is None:
                raise HTTPException(503, "not connected to the broker; use the device's staff PIN")
            payload = {"cmd": cmd, "alert_id": incident["id"], "by": user.username}
            where = make_topic(state.topic_prefix(request.app), incident["site"], incident["room"],
                               incident["device"], "cmd")
            try:
                publisher(where, encode(payload), 1)
            except Exception as exc:  # noqa: BLE001 - tell staff, keep serving
                log.error("cmd %s for %s not published: %s", cmd, alert_id, exc)
                raise HTTPException(503, "the command could not be sent to the broker") from None
            state.store(request).audit(user.username, f"alert.{cmd}", incident["id"],
                                       {"device": incident["device"], "room": incident["room"]}, site=user.site)
            return {"sent": payload, "topic": where}

        handler.__name__ = f"alert_{cmd}"
        return handler

    r.add_api_route("/alerts/{alert_id}/ack", command("ack"), methods=["POST"])
    r.add_api_route("/alerts/{alert_id}/clear", command("clear"), methods=["POST"])
    return r
