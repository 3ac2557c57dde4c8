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


# --------------------------------------------------------------------------- a full or damaged disk (issue 13)

from disk_fixtures import fill, small_disk  # noqa: E402,F401


class Problems(list):
    def __call__(self, file, cause, ongoing):
        self.append((file, cause, ongoing))


def test_a_full_disk_uses_the_reserve_then_memory_and_loses_nothing(small_disk):
    disk = small_disk("3m")
    problems = Problems()
    box = Outbox(disk / "outbox.db", reserve_bytes=512 * 1024, on_problem=problems)
    assert (disk / "outbox.reserve").stat().st_size == 512 * 1024
    first = box.put("t/event", b'{"n": 0}', 1, "event")
    filler = fill(disk)
    # Full: the commit fails, the reserve goes, the commit is tried again and reaches the disk.
    # (Before: "OperationalError: cannot rollback - no transaction is active" from put().)
    second = box.put("t/alert", b'{"n": 1}', 1, "alert", keep=("alert", {"id": "a1", "state": "raised"}))
    assert not (disk / "outbox.reserve").exists() and box.in_memory == 0
    assert problems[-1] == ("outbox.db", "disk full: the outbox is using its reserve", True)
    assert box.problem == "disk full: the outbox is using its reserve"
    # The freed space fills up again: rows wait in memory, still in order, still pending.
    fill(disk, "filler-2")
    third = box.put("t/alert", b'{"n": 2}', 1, "alert", keep=("alert", {"id": "a1", "state": "escalated"}))
    fourth = box.put("t/event", b'{"n": 3}', 1, "event")
    assert box.in_memory == 2 and [p.id for p in box.pending()] == [first, second, third, fourth]
    assert box.kept("alert") == {"id": "a1", "state": "escalated"}
    assert "kept in memory" in problems[-1][1] and problems[-1][2] is True
    assert box.delete_many([first, third]) == 2                     # PUBACKs still work
    assert [p.id for p in box.pending()] == [second, fourth]
    assert box.recover() is False                                   # still no room
    # Space comes back: everything waiting goes to disk in one transaction, the reserve is made again.
    filler.unlink()
    (disk / "filler-2").unlink()
    assert box.recover() is True
    assert box.in_memory == 0 and box.problem is None and (disk / "outbox.reserve").exists()
    assert problems[-1] == ("outbox.db", "recovered", False)
    box.close()
    again = Outbox(disk / "outbox.db")
    assert [json.loads(p.payload)["n"] for p in again.pending()] == [1, 3]
    assert again.kept("alert") == {"id": "a1", "state": "escalated"}
    later = again.put("t/event", b'{"n": 4}', 1, "event")
    assert later > fourth                                           # ids keep growing: send order holds


def test_an_outbox_opened_on_a_full_disk_runs_from_memory(small_disk):
    disk = small_disk("1m")
    filler = fill(disk)
    problems = Problems()
    box = Outbox(disk / "outbox.db", reserve_bytes=64 * 1024, on_problem=problems)  # before: UserError, exit
    row = box.put("t/alert", b'{"n": 1}', 1, "alert", keep=("alert", {"id": "a1", "state": "raised"}))
    assert [p.id for p in box.pending()] == [row] and box.kept("alert")["id"] == "a1"
    assert problems and problems[-1][2] is True
    filler.unlink()
    assert box.recover() is True and box.in_memory == 0
    box.close()
    assert [json.loads(p.payload)["n"] for p in Outbox(disk / "outbox.db").pending()] == [1]


@pytest.mark.parametrize("damage", ["random bytes", "malformed page"])
def test_a_damaged_outbox_is_moved_aside_and_a_fresh_one_started(tmp_path, damage, caplog):
    import os

    db = tmp_path / "outbox.db"
    if damage == "random bytes":
        db.write_bytes(os.urandom(20000))
    else:
        box = Outbox(db, reserve_bytes=0)
        for i in range(200):
            box.put("t/event", json.dumps({"n": i, "pad": "x" * 200}).encode(), 1, "event")
        box.checkpoint()
        box.close()
        with open(db, "r+b") as fh:                                 # scribble over a b-tree page
            fh.seek(4096 * 3)
            fh.write(os.urandom(4096))
    problems = Problems()
    box = Outbox(db, on_problem=problems)                           # before: DatabaseError, the agent exited
    [aside] = box.moved_aside
    assert aside.name.startswith("outbox.db.damaged-") and aside.exists() and aside.parent == tmp_path
    assert str(aside) in caplog.text                                 # logged with its path
    assert problems[0][0] == "outbox.db" and "moved aside" in problems[0][1]
    assert box.pending() == [] and box.problem is None
    box.put("t/alert", b"{}", 1, "alert")
    box.close()
    assert Outbox(db).count("alert") == 1


@pytest.mark.timeout(30)
def test_a_truncated_wal_keeps_what_it_can_check(tmp_path):
    """kill -9 with rows only in the WAL, then the WAL cut short (an SD card losing its
    last writes): the outbox opens, keeps the rows before the cut, and says nothing is wrong
    with it (the open alert comes back from its second copy: tests/test_delivery.py)."""
    db = tmp_path / "o.db"
    child = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from agent.uplink.outbox import Outbox
        box = Outbox({str(db)!r}, reserve_bytes=0)
        for i in range(40):
            box.put("classroom/v1/s/r/d/alert", ('{{"id": "%d"}}' % i).encode(), 1, "alert")
        print("written", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    wal = Path(f"{db}-wal")
    size = wal.stat().st_size
    with open(wal, "r+b") as fh:
        fh.truncate(size // 2)
    box = Outbox(db)
    ids = [json.loads(r.payload)["id"] for r in box.pending()]
    assert 0 < len(ids) < 40 and ids == [str(i) for i in range(len(ids))]
    assert box.moved_aside == [] and box.problem is None
