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

The agent never exits because of its own state files (issue 13): a damaged outbox is
moved aside, a full disk is met with the outbox's reserve and then memory, an unusable
cached config or place file is ignored.  Each is reported once as a ``state_degraded``
event (``file``, ``cause``, ``ongoing``) and, while it lasts, in the ``degraded`` field
of the retained status (``state_problem``).

Where the device is, ``network_location`` (school, or offsite: a laptop at home, a trip),
is decided by agent/uplink/location.py, which the runtime adds whenever it connects (idle
unless site.yaml has ``offsite``); ``set_location`` re-sends the policy, so the filter
forwards to the resolver of that place, and reconnects the link to its broker.

Before any config has loaded the runtime uses where the device last knew it was
(agent/core/place.py): the button is armed on its pins and a press is sent to that room.

systemd's READY=1 means the device is protected: it is sent once the boot job has run
(every component started: the filter's dnsmasq is up and closed, refusing every name
until a policy opens the allowlist, or the filter has said it cannot run), the control
socket serves presses, and the button is armed (on its configured pins, or the
last-known ones).  Nothing on the way waits for the network.
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
from ..config.credentials import enrolled_room
from ..config.pins import make_pin_factory
from ..desktop.backends import make_desktop
from ..desktop.base import Desktop, Words
from ..desktop.headless import HeadlessButton
from ..desktop.pin import load_staff_pin
from ..desktop.session import Session, pick_desktop, read_sessions, user_groups
from ..desktop.sound import SilentPlayer
from ..errors import problems_line
from ..report.alert import Report
from ..report.button import OnScreenButton, ReportButton, StatusLED
from ..report.screen import Screen
from ..uplink.outbox import RETRY_SECONDS, Outbox, priority_for
from .clock import SystemClock
from .control import ControlServer
from .interfaces import Component, SessionSource
from .place import Place, load_place, save_place
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
        self.sound = self.desktop.sound or SilentPlayer()
        self._policy_user: tuple[str | None, tuple[str, ...]] = (None, ())  # who the policy was made for
        self.pin_factory = pin_factory if pin_factory is not None else make_pin_factory(bootstrap.pin_factory)
        self.scheduler = Scheduler(self.clock)
        # State-file trouble: {file: cause} while it lasts (the status's "degraded").
        self.degraded: dict[str, str] = {}
        self._held_events: list[tuple[str, dict]] = []
        self._state_retry_due = False
        self.outbox = Outbox(self.state_dir / "outbox.db", max_rows=outbox_max_rows,
                             on_problem=lambda file, cause, ongoing: self.state_problem(file, cause, ongoing=ongoing))
        self.place, problem = load_place(self.state_dir, bootstrap.site)
        if problem:
            self.state_problem("place.json", problem, ongoing=False)
        if self.place is None:
            # Never had a config: the room it was enrolled in, if enrolment said (agent/uplink/enrol.py).
            room = enrolled_room(bootstrap.credentials, bootstrap.site)
            if room is not None and protocol.ID_RE.match(room):
                self.place = Place(site=bootstrap.site, room=room)
        self.tree: ConfigTree | None = None
        self.policy = None
        self.link = None
        self._link_url: str | None = None
        # school | offsite (agent/uplink/location.py); a device always starts at school.
        self.network_location = protocol.LOCATIONS[0]
        self.control: ControlServer | None = None
        self.components: list[Component] = []
        self.evidence_source: Callable[[int], list[dict]] = lambda minutes: []
        self.report = Report(self.screen)
        self.button = ReportButton(None, when_pressed=self.report.press)
        self.led: StatusLED | None = None
        # The on-screen twin of the button (agent/desktop/button.py), part of the press path like it.
        self.screen_button = OnScreenButton(self.desktop.button or HeadlessButton())
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
        self.add_component(self.screen_button)
        if connect and not bootstrap.config_dir:
            from ..uplink.configsync import ConfigSync  # config comes from the collector

            self.add_component(ConfigSync.from_bootstrap(bootstrap))
        components = list(components or ())
        if connect and not any(getattr(c, "name", None) == "location" for c in components):
            from ..uplink.location import NetworkLocation  # idle unless site.offsite is configured

            self.add_component(NetworkLocation())
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
        # However long the components take to start (dnsmasq, the desktop), READY waits for them.
        self.call(self._boot, timeout=None)
        self._start_watchdog()
        if self._control_enabled:
            self.control = ControlServer(self.bootstrap.control_socket, {
                **self._control_handlers,  # what components registered as they started
                "press": lambda req: self.press(str(req.get("source") or "control")),
                # status is read on the queue thread, so it sees a consistent state
                "status": lambda req: {"status": self.call(self.status, timeout=5)},
            }, group=self.bootstrap.control_group)
            self.control.start()
        # Protected now (see the module docstring): the button is armed, dnsmasq is closed.
        where = self.policy.room if self.policy else (self.place.room if self.place else None)
        self.notifier.ready(f"device {self.bootstrap.device}, room {where or 'not known yet'}, "
                            f"config {self.tree.version if self.tree else 'none yet'}")
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
        if self.policy is None:
            log.error("no config yet: set config_dir in agent.yaml or let the collector deliver one")
            if self.place is not None:
                # Armed and addressed as last known, until a config arrives.
                log.warning("using the last-known place until a config arrives: room %s", self.place.room)
                hardware = self._place_hardware()
                if hardware is not None:
                    self._ensure_hardware(hardware)
                self._ensure_link()
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
            except (OSError, ValueError, TypeError, KeyError, ConfigInvalid) as exc:
                self.state_problem("config.json", f"cached config unusable ({str(exc).splitlines()[0][:200]}); "
                                   "waiting for the collector", ongoing=False)
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
            policy = self._policy_of(tree)
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
        self._keep_place(policy)
        held, self._held_events = self._held_events, []
        for kind, fields in held:
            self.emit_event(kind, **fields)
        if tree.version != previous:
            log.info("config %s applied (was %s)", tree.version, previous)
            self.emit_event("config_applied", version=tree.version, previous=previous)
            if self.link is not None:
                # The retained status names the running version: a collector (or a worker)
                # that connects later reads it from there, and an event it missed while
                # it was away does not tell it (it waited for the next reconnect before).
                self.link.publish_status()
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

    def _keep_place(self, policy) -> None:
        """Remember where this policy puts the device, for a start without config."""
        place = Place.of(policy, self.tree.site.broker.prefix)
        if place == self.place:
            return
        try:
            save_place(self.state_dir, place)
        except OSError as exc:
            self.state_problem("place.json", f"cannot write ({exc.strerror or exc})", ongoing=False)
        self.place = place

    def _place_hardware(self):
        try:
            return self.place.hardware_model() if self.place is not None else None
        except ValueError:
            return None

    def _reevaluate(self) -> None:
        """A timetable boundary: lessons start, school ends, a club's slot opens."""
        self._policy_timer = None
        if self.tree is not None:
            self._set_policy(self._policy_of(self.tree))

    def _policy_of(self, tree: ConfigTree):
        """The effective policy now, for whoever is at the device: a staff login gets the
        site's staff profile, a pupil in a ``language_groups`` group their language."""
        user = self.current_user()
        groups = tuple(user_groups(user)) if user else ()
        self._policy_user = (user, groups)
        return effective_policy(tree, self.bootstrap.device, self.clock(), user=user, groups=groups)

    def session_changed(self) -> None:
        """Someone logged in or out (agent/policy/sessions.py): a staff login, or a pupil
        with another language, changes the policy (queue thread)."""
        if self.tree is None:
            return
        user = self.current_user()
        if (user, tuple(user_groups(user)) if user else ()) == self._policy_user:
            return
        policy = self._policy_of(self.tree)
        if policy != self.policy:
            log.info("%s at the device: profile %s, language %s", user or "nobody", policy.key_stage, policy.language)
            self._set_policy(policy)

    def say(self, key: str) -> None:
        """Speak *key*'s words on the pupil's screen (the key stage's ``sound``), if a
        recording or chime can be played; never waits (queue thread)."""
        policy = self.policy
        if policy is None or not policy.sound_play:
            return
        try:
            self.sound.play(self.desktop_session(), policy.language, key, policy.messages.get(key, ""),
                            policy.sound_volume)
        except Exception:  # noqa: BLE001 - a sound is a nicety; the screen is what matters
            log.exception("could not play %s", key)

    def words(self, key: str) -> Words:
        """*key*'s words for the pupil's screen now, with its pictogram."""
        from ..config.schema import DEFAULT_MESSAGES

        text = (self.policy.messages.get(key) if self.policy is not None else None) or DEFAULT_MESSAGES[key]
        return Words(text, key)

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
                                       hold_ms=hardware.press_hold_ms, pin_factory=self.pin_factory,
                                       when_pressed=self.report.press)
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

    def address(self) -> tuple[str, str, str] | None:
        """(prefix, site, room) this device's messages go under: from the policy, else the
        last-known place, else None (nowhere to send them yet)."""
        if self.policy is not None and self.tree is not None:
            return self.tree.site.broker.prefix, self.policy.site, self.policy.room
        if self.place is not None and self.place.room:
            return self.place.prefix, self.place.site, self.place.room
        return None

    def broker_url(self) -> str:
        """The broker to report to: agent.yaml's, or off the school network the trust's
        public-facing one (site.offsite.broker_url) when there is one."""
        offsite = self.tree.site.offsite if self.tree is not None else None
        if self.network_location == "offsite" and offsite is not None and offsite.broker_url:
            return offsite.broker_url
        return self.bootstrap.broker_url

    def set_location(self, location: str, reason: str) -> None:
        """The device moved on or off the school network (agent/uplink/location.py; queue
        thread): the filter picks its resolver and the link its broker, then it is said."""
        previous = self.network_location
        if location == previous:
            return
        self.network_location = location
        log.warning("network location: %s -> %s (%s)", previous, location, reason)
        if self.policy is not None:
            self._set_policy(self.policy)
        else:
            self._ensure_link()
        # After the switch: it goes to the broker of where the device is now (through the outbox).
        self.emit_event("network_location", location=location, previous=previous, reason=reason[:200])

    def _ensure_link(self) -> None:
        if not self._connect:
            return
        where = self.address()
        if where is None:
            return
        prefix, site, room = where
        url = self.broker_url()
        if self.link is not None:
            if (self.link.prefix, self.link.site, self.link.room) == where and self._link_url == url:
                return
            if self._link_url != url:
                log.warning("reporting to %s now (%s)", url, self.network_location)
            else:
                log.warning("device moved to room %s: reconnecting under the new topics", room)
            self.link.stop()
        from ..config.credentials import load_credentials
        from ..uplink.link import Link

        broker = self.tree.site.broker if self.tree is not None else None
        username, password = load_credentials(self.bootstrap.credentials)
        report = self.report
        self._link_url = url
        self.link = Link(broker_url=url, prefix=prefix, site=site,
                         room=room, device=self.bootstrap.device, outbox=self.outbox,
                         on_command=lambda cmd: self.post(self._on_command, cmd),
                         username=username, password=password, ca_file=self.bootstrap.ca_file,
                         config_version=lambda: self.tree.version if self.tree else "",
                         agent_version=__version__, later=self.defer,
                         keepalive=broker.keepalive_seconds if broker else 30,
                         reconnect_max=broker.reconnect_max_seconds if broker else 2.0,
                         batch_max=broker.batch_events if broker else protocol.BATCH_MAX,
                         connect_timeout=broker.connect_timeout_seconds if broker else 2.0,
                         republish=lambda: [("alert", last)] if (last := report.last_transition) else [],
                         degraded=self.degraded_text, location=lambda: self.network_location,
                         on_ready=lambda first: self.post(self._link_ready, first))
        self.link.start()

    def _link_ready(self, first: bool) -> None:
        """A connection has drained its backlog: look for a config published while the
        device was away (a conditional fetch, 304 when there is none).  This replaces the
        retained reload-config, which the link no longer replays (agent/uplink/link.py)."""
        if not self.bootstrap.config_dir:
            self._on_command({"cmd": "reload-config", "by": "reconnect" if not first else "connect"})

    # ------------------------------------------------------------------ state-file trouble
    def state_problem(self, file: str, cause: str, *, ongoing: bool = True) -> None:
        """A state file could not be used (from any thread).  Logged at once; on the queue
        thread: a ``state_degraded`` event and, while *ongoing*, the status's ``degraded``.
        ``cause`` "recovered" with ``ongoing=False`` ends an ongoing one."""
        if cause != "recovered":
            log.error("state file %s: %s", self.state_dir / file, cause)
        self.scheduler.post(self._state_problem, file, cause, ongoing)

    def _state_problem(self, file: str, cause: str, ongoing: bool) -> None:
        before = self.degraded_text()
        if ongoing:
            self.degraded[file] = cause
        elif cause == "recovered":
            self.degraded.pop(file, None)
            log.warning("state file %s: recovered", self.state_dir / file)
        if self.address() is None:
            # Nowhere to send it yet (no config, no last-known room): with the first config.
            self._held_events.append(("state_degraded", {"file": file, "cause": cause, "ongoing": ongoing}))
        else:
            self.emit_event("state_degraded", file=file, cause=cause, ongoing=ongoing)
        if self.degraded_text() != before and self.link is not None:
            self.link.publish_status()
        if self.outbox.problem is not None:
            self._retry_state_soon()

    def degraded_text(self) -> str | None:
        """What the retained status says is wrong with the state files, or None."""
        return "; ".join(f"{file}: {cause}" for file, cause in sorted(self.degraded.items())) or None

    def _retry_state_soon(self) -> None:
        if not self._state_retry_due:
            self._state_retry_due = True
            self.defer(RETRY_SECONDS, self._retry_state)

    def _retry_state(self) -> None:
        """While the outbox is in trouble: try its disk again every RETRY_SECONDS."""
        self._state_retry_due = False
        if self._stopped:
            return
        if not self.outbox.recover():
            self._retry_state_soon()

    # ------------------------------------------------------------------ messages
    @property
    def evidence_minutes(self) -> int:
        return self.tree.site.filtering.evidence_minutes if self.tree is not None else 10

    def send(self, kind: str, payload: dict, *, keep: tuple[str, dict | None] | None = None) -> int | None:
        """Store-and-publish on this device's *kind* topic (outbox first); ``keep``: local
        state committed in the same transaction (agent/uplink/outbox.py)."""
        if self.link is not None:
            return self.link.send(kind, payload, keep=keep)
        where = self.address()
        if where is None:
            log.error("no config yet and no last-known room: cannot address a %s message; dropped", kind)
            if keep is not None:
                self.outbox.keep(*keep)
            return None
        # Not connected yet, or not connecting (tests, offline tools): still durable, sent
        # when the link comes up or by a later run.
        prefix, site, room = where
        raw = protocol.encode(payload)
        if len(raw) > protocol.MAX_PAYLOAD:
            log.error("refused to store a %d-byte %s message (the limit is %d)", len(raw), kind, protocol.MAX_PAYLOAD)
            if keep is not None:
                self.outbox.keep(*keep)
            return None
        topic = protocol.topic(prefix, site, room, self.bootstrap.device, kind)
        return self.outbox.put(topic, raw, protocol.QOS[kind], kind, retain=kind in protocol.RETAINED,
                               priority=priority_for(kind, payload.get("type")), keep=keep)

    def keep(self, key: str, value: dict | None) -> None:
        """Set (or with None, remove) local state kept beside the outbox (the open alert)."""
        self.outbox.keep(key, value)

    def kept(self, key: str) -> dict | None:
        return self.outbox.kept(key)

    def emit_event(self, type: str, **fields) -> dict:  # noqa: A002 - the contract's name
        """Build an event (id, type, ts, site, room, device + fields), store it, publish it."""
        where = self.address()
        event = {"id": protocol.new_id(), "type": type, "ts": protocol.now_ts(self.clock()),
                 "site": where[1] if where else self.bootstrap.site,
                 "room": where[2] if where else None, "device": self.bootstrap.device, **fields}
        if where is None:
            log.warning("event %s not sent: no config yet (no room to address it to)", type)
            return event
        protocol.validate("event", event)
        self.send("event", event)
        return event

    def _on_command(self, cmd: dict) -> None:
        """Hand a command to whoever handles it; a command with an ``id`` (the collector
        gives every one of its own an id) is answered with a ``cmd_result`` event, so the
        teacher sees whether this device obeyed (docs/protocol.md, "cmd_result")."""
        result, error = self._route_command(cmd)
        if cmd.get("id"):
            fields = {"cmd_id": cmd["id"], "cmd": cmd["cmd"], "by": cmd.get("by"), "result": result}
            if error:
                fields["error"] = error[:300]
            self.emit_event("cmd_result", **fields)

    def _route_command(self, cmd: dict) -> tuple[str, str | None]:
        """(result, error) of *cmd*: one of protocol.CMD_RESULTS, and why when not done."""
        name = cmd["cmd"]
        if name in ("ack", "clear"):
            self.report.on_command(cmd)
            return "done", None
        if name == "reload-config" and self.bootstrap.config_dir:
            log.info("reload-config requested by %s", cmd.get("by"))
            if self.reload_config():
                return "done", None
            return "refused", "the local config did not load (config_rejected says why)"
        # Without a local tree, reload-config goes to the collector sync (agent/uplink/configsync.py).
        for component in self.components:
            if component is self.report:
                continue
            try:
                if component.on_command(cmd):
                    return "done", None
            except protocol.CommandRefused as exc:
                return "refused", " ".join(str(exc).split()) or "refused"
            except Exception as exc:  # noqa: BLE001
                log.exception("component %s failed on cmd %s", component.name, name)
                return "failed", f"{component.name}: {type(exc).__name__}"
        log.warning("cmd %s from %s: nothing on this device handles it", name, cmd.get("by"))
        return "unsupported", f"nothing on this device handles {name!r}"

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
        if self.outbox.problem is not None:
            self._retry_state_soon()
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
            "location": self.network_location,
            "broker": self._link_url,
            "outbox_pending": self.outbox.count(),
            "outbox_in_memory": self.outbox.in_memory,
            "outbox_memory_total": self.outbox.memory_total,
            "degraded": self.degraded_text(),
            "button_presses": self.button.presses,
            **self.report.status(),
            "components": [c.name for c in self.components],
        }


def default_components(sessions: SessionSource | None = None) -> list:
    """The components of a real classroom device, besides the report and config sync every
    runtime has: filter, sessions (*sessions* if given, the same one the runtime is given
    as its sessions source), lock, a teacher's message, guard.  One that cannot be built is left out with a
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

    def teacher_message(source):
        from ..policy.teacher_message import TeacherMessage

        return TeacherMessage(session=source.desktop if source is not None else None)

    the_guard = build("Guard", guard)
    the_sessions = sessions if sessions is not None else build("SessionsComponent", session_component)
    # The browser policy files the filter writes are the guard's to protect.
    found = [build("FilterComponent", lambda: web_filter(the_guard.protect if the_guard is not None else None)),
             the_sessions, build("LockComponent", lock),
             build("TeacherMessage", lambda: teacher_message(the_sessions)), the_guard]
    return [c for c in found if c is not None]
