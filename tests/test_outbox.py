"""The durable outbox: order, delete-on-PUBACK, bounds, and survival of kill -9."""

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.uplink.outbox import EVENT, HEARTBEAT, PROTECTED, Outbox, priority_for

REPO = Path(__file__).resolve().parent.parent


def test_rows_come_back_in_order_and_delete_once(tmp_path):
    box = Outbox(tmp_path / "o.db")
    ids = [box.put(f"t/{i}", json.dumps({"n": i}).encode(), 1, "event") for i in range(3)]
    assert [p.topic for p in box.pending()] == ["t/0", "t/1", "t/2"]
    assert box.delete(ids[1]) is True
    assert box.delete(ids[1]) is False  # a second PUBACK for the same row is harmless
    assert [p.id for p in box.pending()] == [ids[0], ids[2]]
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert [json.loads(p.payload)["n"] for p in again.pending()] == [0, 2]


def test_sync_and_checkpoint(tmp_path):
    box = Outbox(tmp_path / "o.db")
    box.sync()
    box.put("t", b"{}", 1, "alert", sync=False)
    box.sync()
    box.checkpoint()                          # folds the WAL into the main file
    assert (tmp_path / "o.db-wal").stat().st_size == 0
    assert box.count("alert") == 1


def test_priorities():
    assert priority_for("alert") == PROTECTED
    assert priority_for("event", "report_evidence") == PROTECTED
    assert priority_for("event", "blocked") == EVENT
    assert priority_for("heartbeat") == HEARTBEAT


def test_full_outbox_evicts_heartbeats_then_events_never_alerts(tmp_path):
    box = Outbox(tmp_path / "o.db", max_rows=4)
    box.put("a", b"{}", 1, "alert")
    box.put("h1", b"{}", 0, "heartbeat")
    box.put("e1", b"{}", 1, "event")
    box.put("h2", b"{}", 0, "heartbeat")
    box.put("e2", b"{}", 1, "event")            # full: oldest heartbeat goes
    assert [p.topic for p in box.pending()] == ["a", "e1", "h2", "e2"]
    box.put("ev", b"{}", 1, "event", priority=PROTECTED)  # report_evidence
    assert [p.topic for p in box.pending()] == ["a", "e1", "e2", "ev"]
    box.put("a2", b"{}", 1, "alert")            # no heartbeats left: oldest event goes
    assert [p.topic for p in box.pending()] == ["a", "e2", "ev", "a2"]
    box.put("a3", b"{}", 1, "alert")            # the last ordinary event goes
    assert [p.topic for p in box.pending()] == ["a", "ev", "a2", "a3"]
    box.put("a4", b"{}", 1, "alert")            # only protected rows left: grow, never drop an alert
    assert [p.topic for p in box.pending()] == ["a", "ev", "a2", "a3", "a4"]
    assert box.count("alert") == 4
    assert box.evicted == 4


@pytest.mark.timeout(30)
def test_rows_survive_sigkill(tmp_path):
    db = tmp_path / "o.db"
    child = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from agent.uplink.outbox import Outbox
        box = Outbox({str(db)!r})
        for i in range(20):
            # half as the link writes them: committed, fsync left for after the publish
            box.put("classroom/v1/s/r/d/alert", ('{{"id": "%d"}}' % i).encode(), 1, "alert", sync=i % 2 == 0)
        print("written", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = Outbox(db).pending()
    assert [json.loads(r.payload)["id"] for r in rows] == [str(i) for i in range(20)]
    assert all(r.kind == "alert" and r.qos == 1 for r in rows)


def test_kept_state_goes_in_with_its_message_or_not_at_all(tmp_path, caplog):
    box = Outbox(tmp_path / "o.db")
    assert box.kept("alert") is None
    box.put("t/alert", b'{"state": "raised"}', 1, "alert", sync=False, keep=("alert", {"id": "a1", "state": "raised"}))
    assert box.kept("alert") == {"id": "a1", "state": "raised"}
    # State that cannot be stored takes its message down with it: one transaction.
    with pytest.raises(TypeError):
        box.put("t/alert", b'{"state": "acknowledged"}', 1, "alert", keep=("alert", {"id": "a1", "odd": {1, 2}}))
    assert box.kept("alert")["state"] == "raised" and box.count() == 1

    box.put("t/alert", b'{"state": "cleared"}', 1, "alert", keep=("alert", None))
    assert box.kept("alert") is None and box.count() == 2
    box.keep("alert", {"id": "a2", "state": "raised", "presses": 2})
    box.close()
    box = Outbox(tmp_path / "o.db")
    assert box.kept("alert")["presses"] == 2   # and it is on disk

    box._db.execute("UPDATE kept SET value = '{broken' WHERE key = 'alert'")
    assert box.kept("alert") is None
    assert "kept alert is unreadable" in caplog.text


def test_one_agent_per_outbox(tmp_path):
    """The outbox is opened with an exclusive lock: a second agent on the same state
    directory gets one line saying so, and the first one's rows are untouched."""
    from agent.errors import UserError

    box = Outbox(tmp_path / "o.db")
    box.put("t/alert", b"{}", 1, "alert")
    with pytest.raises(UserError) as err:
        Outbox(tmp_path / "o.db")
    assert str(err.value) == f"{tmp_path / 'o.db'}: in use by another classroom-agent (one agent per state_dir)"
    assert box.count() == 1
    box.put("t/event", b"{}", 1, "event")
    box.close()
    assert Outbox(tmp_path / "o.db").count() == 2


def test_row_count_is_kept_in_step_with_the_table(tmp_path):
    box = Outbox(tmp_path / "o.db", max_rows=3)
    rows = [box.put("t/heartbeat", b"{}", 0, "heartbeat") for _ in range(3)]
    box.put("t/alert", b"{}", 1, "alert")                 # evicts the oldest heartbeat
    assert box.count() == 3 and box._rows == 3
    assert box.delete_many(rows) == 2 and box._rows == box.count() == 1
    assert not box.delete(rows[0]) and box._rows == 1
    box.close()
    assert Outbox(tmp_path / "o.db")._rows == 1           # counted again on open
