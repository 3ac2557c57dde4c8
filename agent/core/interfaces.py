"""The runtime contract in code: what a component is, and what it may use of the runtime.

docs/architecture.md tells the story; these Protocols are the check.  A component
(``Component``) is a plain object the runtime starts, tells about every policy and
offers every command; the runtime it is given (``RuntimeAPI``) is all it may touch: the
real ``Runtime`` (agent/core/runtime.py) and the one fake the tests use
(tests/fake_runtime.py) are both checked against it (tests/test_interfaces.py).

Components get what they need passed in: the runtime's own services here, the desktop's
backends (``runtime.desktop``, built with the session in front), and each other's
services at construction (the filter is given the guard's ``protect``).  None looks
another up by name.

Threads: ``start``, ``stop``, ``on_policy`` and ``on_command`` run on the runtime's queue
thread, and so does every job given to ``post``, ``call``, ``call_at``, ``call_later``
and ``defer``; a component's own threads hand work over with ``post``.  The report's
press is the one exception, on purpose (agent/report/alert.py says why).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from ..config import AgentBootstrap, ConfigTree, EffectivePolicy
    from ..desktop.base import Desktop, Words
    from ..desktop.session import Session
    from .place import Place

__all__ = ["Clock", "Component", "RuntimeAPI", "ScreenLike", "SessionSource", "TimerHandle"]


class Clock(Protocol):
    """``clock()`` is now, an aware UTC datetime (agent/core/clock.py)."""

    is_fake: bool

    def __call__(self) -> datetime: ...

    def subscribe(self, fn: Callable[[], None]) -> None: ...


class TimerHandle(Protocol):
    """What ``call_at`` / ``call_later`` return."""

    def cancel(self) -> None: ...


class Component(Protocol):
    """A part of the agent the runtime runs: ``start`` first, then ``on_policy`` with the
    current policy whenever there is one (at start, on every config change, at every
    timetable boundary); ``on_command`` returns True when the command was its own."""

    name: str

    def start(self, runtime: RuntimeAPI) -> None: ...

    def stop(self) -> None: ...

    def on_policy(self, policy: EffectivePolicy) -> None: ...

    def on_command(self, cmd: dict) -> bool: ...


class SessionSource(Protocol):
    """Who is at the device (agent/policy/sessions.py), for the runtime to pass on."""

    def desktop(self) -> Session | None: ...

    def current_user(self) -> str | None: ...


class ScreenLike(Protocol):
    """The screen as the report drives it (agent/report/screen.py)."""

    is_blank: bool
    message: str | None
    when_cleared: Callable[[str], None] | None

    @property
    def backend_name(self) -> str: ...

    def blank(self, message: str) -> None: ...

    def set_message(self, message: str) -> None: ...

    def unblank(self) -> None: ...


class RuntimeAPI(Protocol):
    """What a component may use of the runtime, and nothing else."""

    # What this device is, and what it must enforce now.
    bootstrap: AgentBootstrap
    state_dir: Path
    clock: Clock
    tree: ConfigTree | None        # the applied config; None before the first one
    policy: EffectivePolicy | None  # this device's effective policy now
    place: Place | None            # where the device last knew it was (before any config: agent/core/place.py)
    desktop: Desktop               # the desktop's backends, built once by the runtime
    # The recent-domains list the report sends as evidence (the filter installs its own).
    evidence_source: Callable[[int], list[dict]]

    @property
    def evidence_minutes(self) -> int: ...

    # The queue thread (agent/core/scheduler.py).
    def post(self, fn: Callable, *args) -> None: ...

    def call(self, fn: Callable, *args, timeout: float = 10.0) -> Any: ...

    def call_at(self, when: datetime, fn: Callable, *args) -> TimerHandle: ...

    def call_later(self, seconds: float, fn: Callable, *args) -> TimerHandle: ...

    def defer(self, seconds: float, fn: Callable, *args) -> None: ...

    def on_queue_thread(self) -> bool: ...

    # Messages: stored in the outbox first, then published (agent/uplink/).
    def emit_event(self, type: str, **fields) -> dict: ...  # noqa: A002 - the contract's name

    def send(self, kind: str, payload: dict, *, keep: tuple[str, dict | None] | None = None) -> int | None: ...

    def keep(self, key: str, value: dict | None) -> None: ...

    def kept(self, key: str) -> dict | None: ...

    # A state file that cannot be used (damaged, missing, a full disk): logged, sent as a
    # ``state_degraded`` event, and while ``ongoing`` shown in the retained status.
    def state_problem(self, file: str, cause: str, *, ongoing: bool = True) -> None: ...

    def apply_config(self, tree_or_dict: ConfigTree | dict) -> bool: ...

    # Who is at the device (the desktop backends were given the session in front).
    def current_user(self) -> str | None: ...

    # Someone logged in or out: the policy may change (staff profile, the pupil's language).
    def session_changed(self) -> None: ...

    # Pupil screens: a key's words (with its pictogram) in the screen's language, and
    # speaking them (the key stage's sound settings).
    def words(self, key: str) -> Words: ...

    def say(self, key: str) -> None: ...

    # Where the device is: "school" or "offsite" (agent/uplink/location.py, which calls
    # set_location on the queue thread; the filter and the report read it).
    network_location: str

    def set_location(self, location: str, reason: str) -> None: ...

    # The control socket (agent/core/control.py).
    def register_control(self, op: str, handler: Callable[[dict], Any]) -> None: ...

    def unregister_control(self, op: str) -> None: ...
