"""Where the device is: on the school network, or off it (a laptop at home, a trip).

The DfE standard wants filtering on devices taken off-site too.  Off the school network the
school's resolver and broker cannot be reached, so a device that kept using them would
resolve nothing and report nowhere.  With ``site.offsite`` configured this component
watches for that and tells the runtime (``runtime.set_location``), which then:

- has the filter forward allowed names to ``offsite.upstream_dns`` instead of the school's
  resolver: still allowlist-only, only the upstream changes, and nftables lets dnsmasq reach
  the off-site resolver only while it is in use (agent/filter/component.py, nftables.py);
- connects to ``offsite.broker_url`` (the trust's public-facing broker), if there is one;
  the outbox keeps everything queued meanwhile, as it does for any outage;
- marks a report raised off-site (``location: offsite`` on the alert), which the collector
  sends to the ``remote-learning`` escalation contact (server/notify/notifier.py);
- reports each switch as a ``network_location`` event (and ``location`` in the status).

The rule (``LocationRule``, kept free of clocks and sockets so it is tested with a fake
clock): the school network is *present* when one of the ``offsite.detect_by`` probes
succeeds: a school resolver answers a query (any answer, even NXDOMAIN), or the school
broker (agent.yaml's ``broker_url``) accepts a TCP connection.  At school, the device goes
off-site once the school network has been absent, probe after probe, for
``leave_after_seconds`` and an off-site resolver answers; off-site, it comes back once the
school network has been present, without a miss, for ``return_after_seconds``.  The two
durations are the hysteresis: one lost probe never moves a device, and a flapping link
leaves it where it is.  A device always starts at school.

Probes run on this component's own thread, never on the queue thread (a resolver that
does not answer takes its whole timeout).  Its DNS queries carry ``PROBE_MARK`` (SO_MARK,
which needs CAP_NET_ADMIN, as loading nftables does), so nftables lets them reach the
resolver they name instead of redirecting them to the device's own dnsmasq; without the
capability (tests, no nftables) they go unmarked, which is the same thing there.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .. import protocol
from ..filter import dnsclient

if TYPE_CHECKING:
    from ..core.interfaces import RuntimeAPI

log = logging.getLogger(__name__)

SCHOOL, OFFSITE = protocol.LOCATIONS
# The name a probe asks for: any answer at all (NXDOMAIN, REFUSED) means the resolver is there.
PROBE_NAME = "classroom-safety-probe.invalid"
PROBE_TIMEOUT = 1.5


@dataclass
class LocationRule:
    """The switching rule with hysteresis (module docstring).  ``observe(now, ...)`` with a
    monotonic time in seconds returns the new location when the device should switch, else None."""

    leave_after: float
    return_after: float
    location: str = SCHOOL
    since: float | None = None   # when the present streak (at school: absent; off-site: present) began

    def observe(self, now: float, school_present: bool, offsite_answers: bool) -> str | None:
        if self.location == SCHOOL:
            if school_present:
                self.since = None
                return None
            if self.since is None:
                self.since = now
            if now - self.since >= self.leave_after and offsite_answers:
                return self._switch(OFFSITE)
            return None
        if not school_present:
            self.since = None
            return None
        if self.since is None:
            self.since = now
        if now - self.since >= self.return_after:
            return self._switch(SCHOOL)
        return None

    def _switch(self, location: str) -> str:
        self.location, self.since = location, None
        return location


@dataclass(frozen=True)
class Probe:
    """One look at the network: what answered."""

    school_resolver: bool
    school_broker: bool
    offsite_resolver: bool

    def school_present(self, detect_by) -> bool:
        return ("resolver" in detect_by and self.school_resolver) or ("broker" in detect_by and self.school_broker)


def resolver_answers(servers, port: int = 53, timeout: float = PROBE_TIMEOUT) -> bool:
    """Does any of *servers* answer a DNS query at all (asked past nftables' redirect)?"""
    for server in servers:
        try:
            rcode, _ = dnsclient.query(PROBE_NAME, server=server, port=port, timeout=timeout,
                                       mark=dnsclient.PROBE_MARK)
        except OSError:
            continue  # no route to it: not there
        if rcode != "TIMEOUT":
            return True
    return False


def broker_reachable(broker_url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Does the broker accept a TCP connection?  (Nothing is sent: reachability only.)"""
    try:
        host, port, _tls = protocol.parse_broker_url(broker_url, "broker_url")
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except (OSError, ValueError, protocol.ProtocolError):
        return False


class NetworkLocation:
    """The runtime component (agent/core/interfaces.py) that moves the device between school
    and off-site.  *probe*: ``probe(offsite, broker_url) -> Probe`` (tests give their own);
    *monotonic*: the clock of the rule; *dns_port*: the resolvers' port (53)."""

    name = "location"

    def __init__(self, *, dns_port: int = 53, monotonic: Callable[[], float] = time.monotonic,
                 probe: Callable | None = None):
        self.dns_port = dns_port
        self.monotonic = monotonic
        self._probe = probe or self.probe
        self.runtime: RuntimeAPI | None = None
        self.rule: LocationRule | None = None
        self.offsite = None          # site.offsite of the current config, or None
        self.last: Probe | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, runtime: RuntimeAPI) -> None:
        self.runtime = runtime
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="network-location", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def on_policy(self, policy) -> None:
        tree = self.runtime.tree
        offsite = tree.site.offsite if tree is not None else None
        if offsite == self.offsite:
            return
        self.offsite = offsite
        if offsite is None:
            self.rule = None
            if self.runtime.network_location != SCHOOL:
                self.runtime.set_location(SCHOOL, "off-site settings removed from the config")
            return
        location = self.runtime.network_location
        self.rule = LocationRule(offsite.leave_after_seconds, offsite.return_after_seconds, location=location)
        self._wake.set()

    def on_command(self, cmd: dict) -> bool:
        return False

    # ------------------------------------------------------------------ probing
    def probe(self, offsite, broker_url: str) -> Probe:
        """The real probes (this component's thread)."""
        tree = self.runtime.tree
        school_dns = tree.site.filtering.upstream_dns if tree is not None else ()
        resolver = "resolver" in offsite.detect_by and resolver_answers(school_dns, self.dns_port)
        broker = "broker" in offsite.detect_by and not resolver and broker_reachable(broker_url)
        present = resolver or broker
        # The off-site resolver only matters when the school network is not there.
        away = not present and resolver_answers(offsite.upstream_dns, self.dns_port)
        return Probe(resolver, broker, away)

    def _loop(self) -> None:
        while not self._stop.is_set():
            offsite = self.offsite
            if offsite is not None:
                try:
                    found = self._probe(offsite, self.runtime.bootstrap.broker_url)
                except Exception:  # noqa: BLE001 - a probe bug must not stop the watching
                    log.exception("network location: probe failed")
                else:
                    self.runtime.post(self._observe, offsite, found, self.monotonic())
            self._wake.wait(offsite.probe_seconds if offsite is not None else 5.0)
            self._wake.clear()

    def _observe(self, offsite, found: Probe, now: float) -> None:
        """Queue thread: one probe's result through the rule."""
        if self.rule is None or offsite is not self.offsite:
            return  # the config changed meanwhile: the next probe counts
        self.last = found
        switch = self.rule.observe(now, found.school_present(offsite.detect_by), found.offsite_resolver)
        if switch == OFFSITE:
            self.runtime.set_location(OFFSITE, f"school network absent for {offsite.leave_after_seconds} s "
                                      f"({' and '.join(offsite.detect_by)} not answering); off-site resolver answers")
        elif switch == SCHOOL:
            what = "resolver" if found.school_resolver else "broker"
            self.runtime.set_location(SCHOOL, f"school {what} answering again for "
                                      f"{offsite.return_after_seconds} s")
