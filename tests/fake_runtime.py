"""The one fake runtime for component tests (lock, sessions, guard, filter).

It is the ``RuntimeAPI`` of agent/core/interfaces.py (docs/architecture.md, "The agent
runtime"), recording instead of publishing: every event it is given is validated with
agent.protocol as the real runtime does, so a component that emits a malformed event
fails its test.  tests/test_interfaces.py checks it, and the real ``Runtime``, against
the Protocol, so the two cannot drift apart.

Time is a ``FakeClock``; timers (``call_at`` / ``call_later``) wait for ``run_due()``.
Posted work runs one of two ways:

* ``threaded=False`` (default): the test's main thread plays the queue thread: ``post``
  and ``call`` from it run at once; other threads' posts (a watchdog, an overlay
  reader) wait for ``run_posted()``.
* ``threaded=True``: a real queue thread, as in the agent (the filter's log follower
  and ticker post from their own threads); ``call`` runs there and waits.  ``close()``
  ends it.

``defer`` runs after real seconds, posted like any other thread's work.
"""

from __future__ import annotations

import queue
import threading
from datetime import datetime, timedelta
from pathlib import Path

from agent import protocol
from agent.config import ConfigInvalid, ConfigTree, effective_policy, load_tree
from agent.config.schema import AgentBootstrap
from agent.core.clock import FakeClock
from agent.desktop.backends import make_desktop

REPO = Path(__file__).resolve().parent.parent
DEVICE = "5b-pi-01"          # ks2, seat "Table 1" in config/rooms/5b.yaml


class FakeTimer:
    def __init__(self, due, fn):
        self.due, self.fn, self.cancelled = due, fn, False

    def cancel(self):
        self.cancelled = True


class FakeRuntime:
    def __init__(self, root, *, device: str = DEVICE, start: datetime | None = None, user: str | None = "pupil1",
                 clock: FakeClock | None = None, threaded: bool = False):
        root = Path(root)
        self.tree = load_tree(REPO / "config")
        self.device = device
        self.clock = clock or FakeClock(start)
        self.state_dir = root / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.bootstrap = AgentBootstrap(
            device=device, site="penny-acres", broker_url="mqtt://127.0.0.1:1", collector_url="http://127.0.0.1:1",
            state_dir=str(self.state_dir), screen_backend="headless", dnsmasq_dir=str(root / "dnsmasq"),
            chromium_policy_dir=str(root / "chromium" / "managed"),
            chromium_native_hosts_dir=str(root / "chromium" / "native-messaging-hosts"),
            blockpage_dir=str(root / "blockpage"),
            firefox_policy_dir=str(root / "firefox" / "policies"), apply_nftables=False)
        self.desktop = make_desktop("headless")
        self.evidence_source = lambda minutes: []
        self.user = user
        self.groups: tuple[str, ...] = ()   # the user's unix groups (staff, language_groups)
        self.said: list[str] = []           # keys spoken, newest last (say)
        self.events: list[dict] = []
        self.sent: list[tuple[str, dict]] = []
        self.applied: list = []
        self.timers: list[FakeTimer] = []
        self.control_ops: dict = {}
        self.posted: queue.SimpleQueue = queue.SimpleQueue()
        self._kept: dict[str, dict] = {}
        self.place = None
        self.network_location = "school"
        self.state_problems: list[tuple[str, str, bool]] = []
        self._cond = threading.Condition()
        self.policy = self.evaluate()
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._loop, name="fake-runtime", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ policy and time
    def evaluate(self):
        self.policy = effective_policy(self.tree, self.device, self.clock(), user=self.user, groups=self.groups)
        return self.policy

    def set_time(self, moment: datetime):
        self.clock.set(moment)
        return self.evaluate()

    @property
    def evidence_minutes(self) -> int:
        return self.tree.site.filtering.evidence_minutes if self.tree is not None else 10

    def apply_config(self, tree_or_dict) -> bool:
        self.applied.append(tree_or_dict)
        try:
            tree = tree_or_dict if isinstance(tree_or_dict, ConfigTree) else ConfigTree.from_dict(tree_or_dict)
        except ConfigInvalid:
            return False
        self.tree = tree
        self.evaluate()
        return True

    # ------------------------------------------------------------------ the queue thread
    def _loop(self):
        while True:
            fn, args, done = self.posted.get()
            if fn is None:
                return
            try:
                done["result"] = fn(*args)
            except BaseException as exc:  # noqa: BLE001
                done["error"] = exc
            finally:
                if "event" in done:
                    done["event"].set()

    def on_queue_thread(self) -> bool:
        if self._thread is not None:
            return threading.current_thread() is self._thread
        return threading.current_thread() is threading.main_thread()

    def post(self, fn, *args):
        if self._thread is None and self.on_queue_thread():
            fn(*args)
        else:
            self.posted.put((fn, args, {}))

    def call(self, fn, *args, timeout: float = 10.0):
        """Run on the queue thread (as the real runtime does) and return the result."""
        if self._thread is None or self.on_queue_thread():
            return fn(*args)
        done = {"event": threading.Event()}
        self.posted.put((fn, args, done))
        assert done["event"].wait(timeout), "queue thread stuck"
        if "error" in done:
            raise done["error"]
        return done.get("result")

    def run_posted(self, timeout: float = 5.0) -> int:
        """(Not threaded.) Run posted jobs until one has run and the queue is empty; return how many ran."""
        ran = 0
        fn, args, _ = self.posted.get(timeout=timeout)
        while True:
            fn(*args)
            ran += 1
            try:
                fn, args, _ = self.posted.get_nowait()
            except queue.Empty:
                return ran

    def close(self):
        if self._thread is not None:
            self.posted.put((None, (), {}))
            self._thread.join(5)
            self._thread = None

    # ------------------------------------------------------------------ timers
    def call_at(self, when: datetime, fn, *args):
        timer = FakeTimer(when, lambda: fn(*args))
        self.timers.append(timer)
        return timer

    def call_later(self, seconds: float, fn, *args):
        return self.call_at(self.clock() + timedelta(seconds=seconds), fn, *args)

    def defer(self, seconds: float, fn, *args) -> None:
        timer = threading.Timer(seconds, self.post, (fn, *args))
        timer.daemon = True
        timer.start()

    def due_timers(self):
        return [t for t in self.timers if not t.cancelled and t.due <= self.clock()]

    def run_due(self) -> int:
        due = self.due_timers()
        for t in due:
            t.cancelled = True
            t.fn()
        return len(due)

    # ------------------------------------------------------------------ messages
    def emit_event(self, type, **fields):  # noqa: A002
        if self.policy is None:
            # As the real runtime: no config yet, no room to address it to; not sent.
            return {"id": protocol.new_id(), "type": type, "ts": protocol.now_ts(self.clock()),
                    "site": self.bootstrap.site, "room": None, "device": self.device, **fields}
        event = {"id": protocol.new_id(), "type": type, "ts": protocol.now_ts(self.clock()),
                 "site": self.policy.site, "room": self.policy.room, "device": self.device, **fields}
        protocol.validate("event", event)
        protocol.decode(protocol.encode(event))  # must be JSON-serialisable
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()
        return event

    def send(self, kind: str, payload: dict, *, keep=None):
        with self._cond:
            self.sent.append((kind, payload))
        if keep is not None:
            self.keep(*keep)
        return None

    def keep(self, key: str, value) -> None:
        if value is None:
            self._kept.pop(key, None)
        else:
            self._kept[key] = dict(value)

    def kept(self, key: str):
        return self._kept.get(key)

    def state_problem(self, file: str, cause: str, *, ongoing: bool = True) -> None:
        self.state_problems.append((file, cause, ongoing))
        self.emit_event("state_degraded", file=file, cause=cause, ongoing=ongoing)

    def of_type(self, kind: str) -> list[dict]:
        with self._cond:
            return [e for e in self.events if e["type"] == kind]

    # ------------------------------------------------------------------ who is at the device
    def current_user(self):
        return self.user

    def session_changed(self) -> None:
        self.evaluate()

    # ------------------------------------------------------------------ pupil screens
    def words(self, key: str):
        from agent.desktop.base import Words

        return Words(self.policy.messages[key], key)

    def set_location(self, location: str, reason: str) -> None:
        """As the real runtime, less the policy re-sent to components (a test does that itself)."""
        previous, self.network_location = self.network_location, location
        if previous != location:
            self.emit_event("network_location", location=location, previous=previous, reason=reason)

    def say(self, key: str) -> None:
        self.said.append(key)

    # ------------------------------------------------------------------ control socket
    def register_control(self, op: str, handler) -> None:
        self.control_ops[op] = handler

    def unregister_control(self, op: str) -> None:
        self.control_ops.pop(op, None)
