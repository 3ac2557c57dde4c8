"""Who was logged in goes where it has a purpose (issue 15 item 2, the device side), with the
REAL agent runtime on a real mosquitto: the report's ``report_evidence`` (server-only topic)
carries the session user (as ``blocked`` does: tests/test_filter_dns.py); the ``alert``
teachers' clients receive and the 30 s heartbeat never do."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from gpiozero.pins.mock import MockFactory

from agent.core.clock import FakeClock
from agent.core.runtime import Runtime
from agent.desktop.session import Session
from agent.policy.sessions import SessionsComponent
from agent.report.screen import Screen
from runtime_fixtures import Subscriber, bootstrap

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_the_session_user_is_in_the_evidence_and_nowhere_a_teacher_or_the_heartbeat_sees(tmp_path, mosquitto):
    clock = FakeClock(datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc))
    pins = MockFactory()
    table = [Session(id="c7", user="amira.k", uid=1001, type="x11", display=":0", seat="seat0")]
    sessions = SessionsComponent(reader=lambda: list(table), poll_seconds=3600)
    sub = Subscriber(mosquitto)
    rt = Runtime(bootstrap(tmp_path, mosquitto), clock=clock, screen=Screen(), pin_factory=pins,
                 sessions=sessions).start()
    try:
        sub.wait_for("status", state="online")
        rt.press("button")
        raised = sub.wait_for("alert", state="raised")
        evidence = sub.wait_for("event", type="report_evidence", alert_id=raised["id"])
        assert evidence["user"] == "amira.k"
        assert "user" not in raised and "amira.k" not in str(raised)
        clock.advance(rt.tree.site.heartbeat_seconds)
        beat = sub.wait_for("heartbeat")
        assert "user" not in beat and "amira.k" not in str(beat)
    finally:
        sub.close()
        rt.stop()
        pins.close()
