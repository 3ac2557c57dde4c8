"""The agent runtime: the one event-queue thread that owns the agent's state, and the
wiring of the components around it (docs/architecture.md, "The agent runtime").

Threads exist only at the edges: gpiozero's pin thread (button), paho's network
thread (MQTT), the control socket and the overlay reader.  They hand work to the
runtime with ``post(fn, *args)``; everything that changes agent state runs on the
queue thread (agent/core/scheduler.py), so components need no locks of their own.  The
one exception is on purpose: a report press blanks the screen and raises the alert on
the pressing thread, with the report's own lock (agent/report/alert.py says why).

Components follow agent/core/interfaces.py: ``name``, ``start(runtime)``, ``stop()``,
``on_policy(policy)``, ``on_command(cmd) -> bool``, and use only the ``RuntimeAPI``
this class provides.  ``start`` runs first, then ``on_policy`` with the current policy
whenever there is one (at start, on every config change, and at every timetable
boundary ``policy.next_change``).

The runtime builds the desktop once (agent/desktop/backends.py: the screen, lock and
idle backends and the AUP presenter) and hands the pieces on; who is at the device
comes from the ``sessions`` source it is given (agent/policy/sessions.py).

Config: a local tree (``bootstrap.config_dir``) or the cached compiled config at
``state_dir/config.json``.  Without a local tree the runtime adds
agent/uplink/configsync.py, which fetches from the collector and calls
``apply_config(tree_or_dict)``: that validates, keeps the last-known-good config on
failure, and reports ``config_applied`` / ``config_rejected`` events.

``default_components()`` is the production set (filter, sessions, lock, guard) that
``classroom-agent run`` adds; tests and simulated devices (``run --simulate``) leave it out.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .. import __version__, protocol
from ..config import ConfigInvalid, ConfigTree, effective_policy, load_tree
from ..config.pins import make_pin_factory
from ..desktop.backends import make_desktop
from ..desktop.base import Desktop
from ..desktop.pin import load_staff_pin
from ..desktop.session import Session, pick_desktop, read_sessions
from ..errors import problems_line
from ..report.alert import Report
from ..report.button import ReportButton, StatusLED
from ..report.screen import Screen
from ..uplink.outbox import Outbox, priority_for
from .clock import SystemClock
from .control import ControlServer
from .interfaces import Component, SessionSource
from .scheduler import Scheduler, Timer, safely
from .sdnotify import Notifier

log = logging.getLogger(__name__)

__all__ = ["Runtime", "default_components"]


class Runtime:
    """The running agent.  ``start()`` / ``stop()``; see the module docstring.

    *screen*, *desktop*: given by tests, else built from the bootstrap; *sessions*: who is
    at the device (also run as a component); *connect*: open the MQTT link; *control*:
    serve the control socket."""

    def __init__(self, bootstrap, *, clock=None, screen: Screen | None = None, desktop: Desktop | None = None,
                 sessions: SessionSource | None = None, pin_factory=None, outbox_max_rows: int = 10_000,
                 connect: bool = True, control: bool = True, components: list | None = None):
        self.bootstrap = bootstrap
        self.clock = clock or SystemClock()
        self.state_dir = Path(bootstrap.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.sessions = sessions
        self.desktop = desktop or make_desktop(bootstrap.screen_backend, session_user=bootstrap.session_user,
                                               staff_pin_hash=load_staff_pin(bootstrap.staff_pin_file),
                                               session_fn=self.desktop_session, state_dir=self.state_dir)
        self.screen = screen or Screen(self.desktop.screen)
        self.pin_factory = pin_factory if pin_factory is not None else make_pin_factory(bootstrap.pin_factory)
        self.outbox = Outbox(self.state_dir / "outbox.db", max_rows=outbox_max_rows)
        self.tree: ConfigTree | None = None
        self.policy = None
        self.link = None
        self.control: ControlServer | None = None
        self.components: list[Component] = []
        self.evidence_source: Callable[[int], list[dict]] = lambda minutes: []
        self.report = Report(self.screen)
        self.button = ReportButton(None, when_pressed=self.report.press)
        self.led: StatusLED | None = None
        self.scheduler = Scheduler(self.clock)
        # The scheduler's own bound methods, not wrappers around them: the press calls
        # defer() on its way to the teacher, and a wrapper would be one more call there.
        self.post = self.scheduler.post
        self.call = self.scheduler.call
        self.call_at = self.scheduler.call_at
        self.call_later = self.scheduler.call_later
        self.defer = self.scheduler.defer
        self.on_queue_thread = self.scheduler.on_queue_thread
        self._hardware = None
        self._connect = connect
        self._control_enabled = control
        self._control_handlers: dict[str, Callable[[dict], Any]] = {}
        self._stopped = False
        self._policy_timer: Timer | None = None
        self._heartbeat_timer: Timer | None = None
        self._boot_monotonic = time.monotonic()
        self.add_component(self.report)
        if connect and not bootstrap.config_dir:
            from ..uplink.configsync import ConfigSync  # config comes from the collector

            self.add_component(ConfigSync.from_bootstrap(bootstrap))
        components = list(components or ())
        if sessions is not None and sessions not in components:
            components.insert(0, sessions)
        for component in components:
            self.add_component(component)
        self.notifier = Notifier()

    @property
    def is_idle(self) -> bool:
        """No deferred housekeeping is waiting (tests and benches: the agent has settled)."""
        return self.scheduler.is_idle

    # ------------------------------------------------------------------ lifecycle
    def add_component(self, component: Component) -> None:
        self.components.append(component)
        if self.scheduler.is_running:
            self.post(self._start_component, component)

    def _start_component(self, component) -> None:
        component.start(self)
        if self.policy is not None:
            component.on_policy(self.policy)

    def start(self) -> "Runtime":
        self.screen.start()
        self.scheduler.start()
        self.call(self._boot)
        self._start_watchdog()
        if self._control_enabled:
            self.control = ControlServer(self.bootstrap.control_socket, {
                **self._control_handlers,  # what components registered as they started
                "press": lambda req: self.press(str(req.get("source") or "control")),
                # status is read on the queue thread, so it sees a consistent state
                "status": lambda req: {"status": self.call(self.status, timeout=5)},
            }, group=self.bootstrap.control_group)
            self.control.start()
        self.notifier.ready(f"device {self.bootstrap.device}, config {self.tree.version if self.tree else 'none yet'}")
        return self

    def _start_watchdog(self) -> None:
        """systemd's WatchdogSec: pings are sent from the queue thread, so a hung queue gets restarted."""
        interval = self.notifier.interval
        if not self.notifier.is_enabled or not interval:
            return

        def pinger():
            while not self._stopped:
                self.post(self.notifier.watchdog)
                time.sleep(interval)  # pacing, not synchronisation
        threading.Thread(target=pinger, name="watchdog", daemon=True).start()

    def _boot(self) -> None:
        for component in list(self.components):
            safely(component.start, (self,))
        tree = self._load_local_config()
        if tree is not None:
            self._apply_config(tree)
        else:
            log.error("no config yet: set config_dir in agent.yaml or let the collector deliver one")
        self._schedule_heartbeat()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.notifier.stopping()
        if self.control is not None:
            self.control.stop()
        if self.scheduler.is_running:
            try:
                self.call(self._shutdown_components)
            except Exception:  # noqa: BLE001
                log.exception("stopping components failed")
            self.scheduler.stop(10)
        if self.link is not None:
            self.link.stop()
        self.button.close()
        if self.led is not None:
            self.led.close()
        self.screen.close()
        self.outbox.close()

    def _shutdown_components(self) -> None:
        for component in reversed(self.components):
            safely(component.stop)

    def press(self, source: str = "control") -> None:
        """A report press from the control socket or the report key."""
        self.button.press(source)

    # ------------------------------------------------------------------ config
    @property
    def config_path(self) -> Path:
        return self.state_dir / "config.json"

    def _load_local_config(self) -> ConfigTree | None:
        if self.bootstrap.config_dir:
            try:
                return load_tree(self.bootstrap.config_dir)
            except ConfigInvalid as exc:
                log.error("config tree %s is invalid; trying the cached copy: %s", self.bootstrap.config_dir,
                          problems_line(exc.errors, f"run `classroom-server config validate {self.bootstrap.config_dir}`"))
        if self.config_path.exists():
            try:
                return ConfigTree.from_dict(json.loads(self.config_path.read_text()))
            except (OSError, ValueError, ConfigInvalid) as exc:
                log.error("%s: cached config unusable: %s", self.config_path, str(exc).splitlines()[0])
        return None

    def apply_config(self, tree_or_dict: ConfigTree | dict) -> bool:
        """Validate and switch to a new config; keep the last-known-good one if it is bad."""
        return self.call(self._apply_config, tree_or_dict)

    def reload_config(self) -> bool:
        tree = self._load_local_config()
        if tree is None:
            log.warning("reload-config: no local config to reload")
            return False
        return self._apply_config(tree)

    def _apply_config(self, tree_or_dict: ConfigTree | dict) -> bool:
        version = None
        try:
            if isinstance(tree_or_dict, ConfigTree):
                tree = tree_or_dict
            else:
                version = tree_or_dict.get("version") if isinstance(tree_or_dict, dict) else None
                tree = ConfigTree.from_dict(tree_or_dict)
            policy = effective_policy(tree, self.bootstrap.device, self.clock())
        except ConfigInvalid as exc:
            return self._reject(version, [str(e) for e in exc.errors])
        except KeyError as exc:
            return self._reject(version, [f"device: {exc.args[0]}"])
        except (ValueError, TypeError) as exc:
            return self._reject(version, [f"{type(exc).__name__}: {exc}"])
        if tree.site.site != self.bootstrap.site:
            return self._reject(tree.version, [f"site: config is for {tree.site.site!r}, this device is in "
                                               f"{self.bootstrap.site!r}"])
        previous = self.tree.version if self.tree is not None else None
        self.tree = tree
        # (The cached copy, state_dir/config.json, is written by agent/uplink/configsync.py alone.)
        self._set_policy(policy)
        if tree.version != previous:
            log.info("config %s applied (was %s)", tree.version, previous)
            self.emit_event("config_applied", version=tree.version, previous=previous)
        return True

    def _reject(self, version: str | None, errors: list[str]) -> bool:
        log.error("config %s rejected; keeping %s: %s", version or "(unknown)",
                  self.tree.version if self.tree else "nothing", errors[0] if errors else "")
        self.emit_event("config_rejected", version=version, errors=errors[:20],
                        kept=self.tree.version if self.tree else None)
        return False

    def _set_policy(self, policy) -> None:
        self.policy = policy
        self._ensure_link()
        self._ensure_hardware(policy.hardware)
        if self._policy_timer is not None:
            self._policy_timer.cancel()
            self._policy_timer = None
        if policy.next_change is not None:
            self._policy_timer = self.call_at(policy.next_change, self._reevaluate)
        for component in list(self.components):
            safely(component.on_policy, (policy,))

    def _reevaluate(self) -> None:
        """A timetable boundary: lessons start, school ends, a club's slot opens."""
        self._policy_timer = None
        if self.tree is not None:
            self._set_policy(effective_policy(self.tree, self.bootstrap.device, self.clock()))

    def _ensure_hardware(self, hardware) -> None:
        if hardware == self._hardware:
            return
        self._hardware = hardware
        self.button.close()
        if self.led is not None:
            self.led.close()
            self.led = None
        try:
            self.button = ReportButton(hardware.button_pin, bounce_ms=hardware.button_bounce_ms,
                                       pin_factory=self.pin_factory, when_pressed=self.report.press)
        except Exception as exc:  # noqa: BLE001 - no GPIO here: the key path still works
            log.error("report button on pin %s unavailable (%s); key and control press still work",
                      hardware.button_pin, exc)
            self.button = ReportButton(None, when_pressed=self.report.press)
        if hardware.led_pin is not None:
            try:
                self.led = StatusLED(hardware.led_pin, pin_factory=self.pin_factory)
            except Exception as exc:  # noqa: BLE001
                log.error("button LED on pin %s unavailable (%s)", hardware.led_pin, exc)
        self.report.set_led(self.led)

    def _ensure_link(self) -> None:
        if not self._connect:
            return
        prefix = self.tree.site.broker.prefix
        if self.link is not None:
            if (self.link.room, self.link.prefix) == (self.policy.room, prefix):
                return
            log.warning("device moved to room %s: reconnecting under the new topics", self.policy.room)
            self.link.stop()
        from ..config.credentials import load_credentials
        from ..uplink.link import Link

        username, password = load_credentials(self.bootstrap.credentials)
        self.link = Link(broker_url=self.bootstrap.broker_url, prefix=prefix, site=self.policy.site,
                         room=self.policy.room, device=self.bootstrap.device, outbox=self.outbox,
                         on_command=lambda cmd: self.post(self._on_command, cmd),
                         username=username, password=password, ca_file=self.bootstrap.ca_file,
                         config_version=lambda: self.tree.version if self.tree else "",
                         agent_version=__version__, later=self.defer)
        self.link.start()

    # ------------------------------------------------------------------ messages
    @property
    def evidence_minutes(self) -> int:
        return self.tree.site.filtering.evidence_minutes if self.tree is not None else 10

    def send(self, kind: str, payload: dict, *, keep: tuple[str, dict | None] | None = None) -> int | None:
        """Store-and-publish on this device's *kind* topic (outbox first); ``keep``: local
        state committed in the same transaction (agent/uplink/outbox.py)."""
        if self.link is not None:
            return self.link.send(kind, payload, keep=keep)
        if self.policy is None:
            log.error("no config yet: cannot address a %s message; dropped", kind)
            if keep is not None:
                self.outbox.keep(*keep)
            return None
        # Not connecting (tests, offline tools): still durable, sent by a later run.
        prefix = self.tree.site.broker.prefix
        topic = protocol.topic(prefix, self.policy.site, self.policy.room, self.bootstrap.device, kind)
        return self.outbox.put(topic, protocol.encode(payload), protocol.QOS[kind], kind,
                               priority=priority_for(kind, payload.get("type")), keep=keep)

    def keep(self, key: str, value: dict | None) -> None:
        """Set (or with None, remove) local state kept beside the outbox (the open alert)."""
        self.outbox.keep(key, value)

    def kept(self, key: str) -> dict | None:
        return self.outbox.kept(key)

    def emit_event(self, type: str, **fields) -> dict:  # noqa: A002 - the contract's name
        """Build an event (id, type, ts, site, room, device + fields), store it, publish it."""
        policy = self.policy
        event = {"id": protocol.new_id(), "type": type, "ts": protocol.now_ts(self.clock()),
                 "site": policy.site if policy else self.bootstrap.site,
                 "room": policy.room if policy else None, "device": self.bootstrap.device, **fields}
        if policy is None:
            log.warning("event %s not sent: no config yet (no room to address it to)", type)
            return event
        protocol.validate("event", event)
        self.send("event", event)
        return event

    def _on_command(self, cmd: dict) -> None:
        name = cmd["cmd"]
        if name in ("ack", "clear"):
            self.report.on_command(cmd)
            return
        if name == "reload-config" and self.bootstrap.config_dir:
            log.info("reload-config requested by %s", cmd.get("by"))
            self.reload_config()
            return
        # Without a local tree, reload-config goes to the collector sync (agent/uplink/configsync.py).
        for component in self.components:
            if component is self.report:
                continue
            try:
                if component.on_command(cmd):
                    return
            except Exception:  # noqa: BLE001
                log.exception("component %s failed on cmd %s", component.name, name)
                return
        log.warning("cmd %s from %s: nothing on this device handles it", name, cmd.get("by"))

    # ------------------------------------------------------------------ who is at the device
    def current_user(self) -> str | None:
        """agent.yaml's ``session_user``, else the sessions source's, else utmp's first."""
        if self.bootstrap.session_user:
            return self.bootstrap.session_user
        if self.sessions is not None:
            return self.sessions.current_user()
        try:
            import psutil

            users = psutil.users()
            return users[0].name if users else None
        except Exception:  # noqa: BLE001
            return None

    def desktop_session(self) -> Session | None:
        """The session whose screen is in front of the pupil (the desktop backends ask)."""
        if self.sessions is not None:
            return self.sessions.desktop()
        return pick_desktop(read_sessions(), self.bootstrap.session_user)

    # ------------------------------------------------------------------ control socket
    def register_control(self, op: str, handler: Callable[[dict], Any]) -> None:
        """Serve control-socket op *op* with *handler* (on the socket's threads) while running."""
        self._control_handlers[op] = handler
        if self.control is not None:
            self.control.register(op, handler)

    def unregister_control(self, op: str) -> None:
        self._control_handlers.pop(op, None)
        if self.control is not None:
            self.control.unregister(op)

    # ------------------------------------------------------------------ heartbeat
    def _schedule_heartbeat(self) -> None:
        seconds = self.tree.site.heartbeat_seconds if self.tree is not None else 30
        self._heartbeat_timer = self.call_later(seconds, self._heartbeat)

    def _heartbeat(self) -> None:
        self._schedule_heartbeat()
        try:
            self.outbox.checkpoint()
        except Exception:  # noqa: BLE001 - a busy or full disk must not stop the heartbeat
            log.exception("outbox checkpoint failed")
        if self.policy is None:
            return
        version = self.tree.version if self.tree else ""
        # Device health only, never who is logged in (agent/uplink/heartbeat.py says why).
        try:
            from ..uplink.heartbeat import collect
        except ImportError:
            payload = {"ts": protocol.now_ts(self.clock()), "uptime": round(time.monotonic() - self._boot_monotonic, 1),
                       "config_version": version}
        else:
            payload = collect(version)
        self.send("heartbeat", payload)

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        link = self.link
        return {
            "device": self.bootstrap.device, "site": self.bootstrap.site,
            "room": self.policy.room if self.policy else None,
            "config_version": self.tree.version if self.tree else None,
            "connected": bool(link and link.is_connected),
            "outbox_pending": self.outbox.count(),
            "button_presses": self.button.presses,
            **self.report.status(),
            "components": [c.name for c in self.components],
        }


def default_components(sessions: SessionSource | None = None) -> list:
    """The components of a real classroom device, besides the report and config sync every
    runtime has: filter, sessions (*sessions* if given, the same one the runtime is given
    as its sessions source), lock, guard.  One that cannot be built is left out with a
    log line: the report button must run whatever else fails."""

    def build(what: str, make: Callable[[], Any]):
        try:
            return make()
        except Exception as exc:  # noqa: BLE001
            log.error("component %s unavailable: %s", what, exc)
            return None

    def guard():
        from ..policy.guard import Guard

        return Guard()

    def web_filter(protect):
        from ..filter.component import FilterComponent

        return FilterComponent(protect=protect)

    def session_component():
        from ..policy.sessions import SessionsComponent

        return SessionsComponent()

    def lock():
        from ..policy.lock import LockComponent

        return LockComponent()

    the_guard = build("Guard", guard)
    # The browser policy files the filter writes are the guard's to protect.
    found = [build("FilterComponent", lambda: web_filter(the_guard.protect if the_guard is not None else None)),
             sessions if sessions is not None else build("SessionsComponent", session_component),
             build("LockComponent", lock), the_guard]
    return [c for c in found if c is not None]
