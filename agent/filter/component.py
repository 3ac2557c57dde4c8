"""The filter component: keeps dnsmasq, the browser policies and nftables in step with policy.

A runtime component (agent/core/interfaces.py; docs/architecture.md): ``start(runtime)``,
``stop()``, ``on_policy(policy)``, ``on_command(cmd) -> bool``; everything that changes
state runs on the runtime's queue thread.  Three helper threads only feed the queue:
the query-log follower (parses dnsmasq's log), the ``Ticker`` (flushes coalesced
``blocked`` events, closes expired overrides, supervises dnsmasq) and short-lived
workers for network look-ups (safe-search endpoints, checks), so a slow upstream never
delays a button press.  Blocked attempts become events through ``BlockedEvents``
(blocked.py); teacher overrides are audited by ``OverrideAudit`` (overrides.py); the
``filter-check`` control op is registered with the runtime once, at start.

Failure rules:
- a bad allowlist or an invalid override changes nothing: the files on disk, dnsmasq and
  the open overrides stay exactly as they were; the problem is logged on one line and
  reported as a ``config_rejected`` / ``override_rejected`` event;
- dnsmasq missing or failing to start disables DNS filtering with a clear log line;
  the rest of the agent (report button, screen, lock) keeps running.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from ..protocol import CommandRefused, now_ts
from . import browser, nftables
from .blocked import Batch, BlockedEvents
from .blockpage import AskTeacher, BlockPage
from .check import check_domains, event_fields
from .dnsmasq import (DnsmasqPaths, DnsmasqProcess, FilterError, FilterSpec, build_spec, dnsmasq_user,
                      find_dnsmasq, render_conf, render_front_conf, render_hosts, render_servers, resolve_targets,
                      write_atomic)
from .evidence import Evidence
from .overrides import OverrideAudit, OverrideError, OverrideStore, parse_allow
from .querylog import QueryLogFollower, Record
from .risk import RiskMatcher

if TYPE_CHECKING:
    from ..core.interfaces import RuntimeAPI

log = logging.getLogger(__name__)

# Safe-search endpoints are re-resolved this often (their addresses rarely change).
TARGET_REFRESH_SECONDS = 3600
TARGET_RETRY_SECONDS = 2
IDLE_TICK_SECONDS = 1.0   # the ticker's pace with no blocked attempts pending
CONTROL_OP = "filter-check"  # `classroom-agent filter check` asks the running agent here
ASK_OP = "ask"               # the block page's "Ask my teacher" (agent/filter/ask_host.py)


class Ticker:
    """A thread that posts *tick* to the queue every *fast* seconds while *busy()* (blocked
    attempts are being gathered) and every *idle* seconds otherwise (supervising dnsmasq,
    expiring overrides), so an idle agent does not wake its queue thread five times a
    second.  ``poke()`` wakes it at once."""

    def __init__(self, post: Callable, tick: Callable[[], None], busy: Callable[[], bool], fast: float,
                 idle: float = IDLE_TICK_SECONDS):
        self.post, self.tick, self.busy, self.fast, self.idle = post, tick, busy, fast, idle
        self._now = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="filter-ticker", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._now.set()

    def stop(self) -> None:
        self._stop.set()
        self._now.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _loop(self) -> None:
        while True:
            self._now.wait(self.fast if self.busy() else self.idle)
            self._now.clear()
            if self._stop.is_set():
                return
            self.post(self.tick)


class FilterComponent:
    """The filter as a runtime component.  *protect*: the guard's ``protect(path, content)``,
    told about each browser policy file before it is written (so a pupil's edit is put
    back); *filtering*: site.filtering, else the runtime tree's."""

    name = "filter"

    def __init__(self, *, filtering=None, dnsmasq_dir: str | None = None, port: int = 53,
                 listen: str = "127.0.0.1", upstream_port: int = 53, manage_dnsmasq: bool = True,
                 dnsmasq_binary: str | None = None, argv_prefix: Sequence[str] = (),
                 chromium_dir: str | None = None, firefox_dir: str | None = None, write_browser: bool = True,
                 apply_nftables: bool | None = None, settle_seconds: float = 1.0, tick_seconds: float = 0.2,
                 log_async: int | None = 50, state_dir: str | None = None, front: bool = True,
                 filter_port: int = 5391, log_max_bytes: int = 8 * 1024 * 1024,
                 protect: Callable[[Path, bytes], None] | None = None, blockpage: bool = True,
                 blockpage_dir: str | None = None, native_hosts_dir: str | None = None):
        self._filtering = filtering
        self.protect = protect
        self._dnsmasq_dir = dnsmasq_dir
        self.port = port
        self.listen = listen
        self.upstream_port = upstream_port
        self.manage_dnsmasq = manage_dnsmasq
        self._binary = dnsmasq_binary
        self.argv_prefix = list(argv_prefix)
        self._chromium_dir = chromium_dir
        self._firefox_dir = firefox_dir
        self.write_browser = write_browser
        self.use_blockpage = blockpage
        self._blockpage_dir = blockpage_dir
        self._native_hosts_dir = native_hosts_dir
        self.blockpage: BlockPage | None = None
        self._apply_nft = apply_nftables
        self.settle_seconds = settle_seconds
        self.tick_seconds = tick_seconds
        self.log_async = log_async
        self._state_dir = state_dir
        self.log_max_bytes = log_max_bytes
        # front: a caching, non-logging dnsmasq on `port` in front of the logging filter
        # on 127.0.0.1:filter_port (see dnsmasq.py for why).
        self.front = front
        self.filter_port = filter_port if front else port

        self.runtime: RuntimeAPI | None = None
        self.dns_enabled = False
        self.policy = None
        self.spec: FilterSpec | None = None
        self.evidence = Evidence()
        self.blocked = BlockedEvents(self._emit_blocked, 60, settle_seconds)
        self.risk = RiskMatcher()   # site.filtering.risk_lists, rebuilt with each policy
        self.overrides: OverrideStore | None = None
        self.audit: OverrideAudit | None = None
        self.dnsmasq: DnsmasqProcess | None = None        # the logging filter
        self.front_proc: DnsmasqProcess | None = None     # the caching front
        self.follower: QueryLogFollower | None = None
        self.device_ip = ""
        self.last_error: str | None = None
        self.nft_applied = False
        self._nft_upstreams: tuple[str, ...] = ()   # the resolvers the loaded table lets dnsmasq reach
        self._targets: dict[str, list[str]] = {}
        self._resolve_attempt_at = 0.0
        self._resolving = False
        self._stop = threading.Event()
        self.ticker = Ticker(self._post, self._tick, lambda: self.blocked.is_gathering, tick_seconds)

    def _post(self, fn: Callable, *args) -> None:
        self.runtime.post(fn, *args)

    # ------------------------------------------------------------------ lifecycle
    def start(self, runtime: RuntimeAPI) -> None:
        self.runtime = runtime
        boot = runtime.bootstrap
        self.paths = DnsmasqPaths(Path(self._dnsmasq_dir or boot.dnsmasq_dir))
        self.chromium_dir = Path(self._chromium_dir or boot.chromium_policy_dir)
        self.firefox_dir = Path(self._firefox_dir or boot.firefox_policy_dir)
        self.overrides = OverrideStore(self._state_dir or runtime.state_dir)
        if self.overrides.all():
            log.info("filter: %d teacher override(s) still open from before the restart", len(self.overrides))
        self.audit = OverrideAudit(runtime.emit_event, lambda: self.policy.key_stage if self.policy else None,
                                   lambda: runtime.policy is not None)
        runtime.evidence_source = self.evidence_for
        runtime.register_control(CONTROL_OP, self._control_check)
        if self.write_browser and self.use_blockpage:
            # The block page a child understands, and its "Ask my teacher" (blockpage.py).
            self.blockpage = BlockPage(self._state_dir or runtime.state_dir,
                                       self._blockpage_dir or boot.blockpage_dir,
                                       self._native_hosts_dir or boot.chromium_native_hosts_dir,
                                       boot.control_socket, protect=self.protect)
            self.blockpage.prepare()
            runtime.register_control(ASK_OP, AskTeacher(lambda domain: runtime.post(self._asked, domain)))
        self._stop.clear()
        if self.manage_dnsmasq:
            self._start_dnsmasq()
        else:
            self.dns_enabled = True  # someone else runs dnsmasq with our files (e.g. a system unit)
        if self.dns_enabled:
            self.follower = QueryLogFollower(self.paths.querylog, self._on_records, max_bytes=self.log_max_bytes,
                                             on_rotate=self._reopen_log if self.dnsmasq else None)
            self.follower.start()
        self.ticker.start()

    def _start_dnsmasq(self) -> None:
        binary = self._binary or find_dnsmasq()
        if binary is None:
            log.error("filter: dnsmasq is not installed: DNS filtering is OFF on this device "
                      "(apt install dnsmasq-base); browser policy still applies")
            return
        try:
            self.paths.dir.mkdir(parents=True, exist_ok=True)
            # dnsmasq re-reads the servers-file as its own unprivileged user after SIGHUP.
            os.chmod(self.paths.dir, 0o755)
            user = dnsmasq_user()
            write_atomic(self.paths.conf, render_conf(self.paths, port=self.filter_port, listen=(self.listen,),
                                                      user=user, log_async=self.log_async))
            if self.front:
                write_atomic(self.paths.front_conf, render_front_conf(
                    port=self.port, listen=(self.listen,), filter_port=self.filter_port, user=user))
            # Until the first policy arrives nothing resolves: fail closed, never open (files
            # left by a previous run may hold overrides that expired meanwhile).
            write_atomic(self.paths.servers, render_servers(FilterSpec("none", (), ())))
            write_atomic(self.paths.hosts, "")
            self._make_log(user)
            self.dnsmasq = DnsmasqProcess(self.paths.conf, self.paths.stderr, port=self.filter_port,
                                          binary=binary, argv_prefix=self.argv_prefix, listen=self.listen)
            self.dnsmasq.start()
            if self.front:
                self.front_proc = DnsmasqProcess(self.paths.front_conf, self.paths.front_stderr, port=self.port,
                                                 binary=binary, argv_prefix=self.argv_prefix, listen=self.listen)
                self.front_proc.start()
        except (FilterError, OSError) as exc:
            log.error("filter: cannot start dnsmasq: %s: DNS filtering is OFF on this device", exc)
            for proc in (self.front_proc, self.dnsmasq):
                if proc is not None:
                    proc.stop()
            self.dnsmasq = self.front_proc = None
            return
        self.dns_enabled = True
        # dnsmasq re-reads the servers-file after SIGHUP as whatever user it now runs as:
        # check that user can reach it, or overrides would silently not apply.
        uid = _process_uid(self.dnsmasq.pid)
        blocked_dir = _unreachable_for(uid, self.paths.dir) if uid not in (None, 0) else None
        if blocked_dir is not None:
            log.error("filter: dnsmasq (uid %s) cannot enter %s: allowlist changes and overrides would not "
                      "apply; make it and its parents o+x (0755)", uid, blocked_dir)
        log.info("filter: dnsmasq serving %s:%d (filter pid %s on :%d%s)", self.listen, self.port, self.dnsmasq.pid,
                 self.filter_port, f", front pid {self.front_proc.pid}" if self.front_proc else "")

    def _make_log(self, user: str | int | None) -> None:
        """Create the query log for dnsmasq: after dropping root it cannot create files here."""
        self.paths.querylog.touch()
        if user is not None and os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
            os.chown(self.paths.querylog, pw.pw_uid, pw.pw_gid)

    def _reopen_log(self) -> None:
        """Follower thread, after it renamed the full log: new file, then SIGUSR2."""
        if self.dnsmasq is not None:
            self._make_log(_process_uid(self.dnsmasq.pid))
            self.dnsmasq.reopen_log()

    def stop(self) -> None:
        self._stop.set()
        self.ticker.stop()
        if self.follower is not None:
            self.follower.stop()
            self.follower = None
        if self.runtime is not None:
            self.runtime.unregister_control(CONTROL_OP)
            self.runtime.unregister_control(ASK_OP)
        if self.runtime is not None and self.policy is not None:
            self.blocked.flush_all()
        for proc in (self.front_proc, self.dnsmasq):
            if proc is not None:
                proc.stop()
        self.dnsmasq = self.front_proc = None
        self.dns_enabled = False

    # ------------------------------------------------------------------ settings
    def filtering(self):
        """site.filtering from the runtime's config tree (or the one given to the constructor)."""
        if self._filtering is not None:
            return self._filtering
        tree = self.runtime.tree
        return tree.site.filtering if tree is not None else None

    # ------------------------------------------------------------------ policy
    def on_policy(self, policy) -> None:
        filtering = self.filtering()
        if filtering is None:
            log.error("filter: no site filtering settings yet; keeping the filter as it was")
            return
        self.blocked.configure(filtering.coalesce_seconds, self.settle_seconds)
        self.risk = RiskMatcher.from_filtering(filtering)
        first = self.policy is None
        # Overrides that expired while the agent was down never open again.
        gone = self.overrides.expired(self.runtime.clock()) if first else []
        if self._apply(policy, filtering):
            self.policy = policy
            if first or (self.nft_applied and self._nft_upstreams != self.spec.upstreams):
                # Off-site and back (agent/uplink/location.py): dnsmasq may reach only the resolver in use.
                self._apply_nftables(filtering)
        else:
            self.runtime.emit_event("config_rejected", version=policy.config_version, errors=[self.last_error],
                                    kept=self.policy.config_version if self.policy else None, part="filter")
        # Closed either way: at start the files are fail-closed until a policy applies.
        self.audit.closed(gone, self.runtime.clock())

    def _apply(self, policy, filtering) -> bool:
        """Compile and install; on any problem leave everything as it was and return False."""
        try:
            resolvers, where = self.upstream_dns(filtering)
            spec = build_spec(policy, resolvers, self.overrides.domains(), upstream_port=self.upstream_port,
                              infrastructure=self._infrastructure(), where=where)
        except FilterError as exc:
            self.last_error = str(exc)
            log.error("filter: %s; keeping the filter as it was", exc)
            return False
        if self.dns_enabled:
            try:
                changed = write_atomic(self.paths.servers, render_servers(spec))
                changed = write_atomic(self.paths.hosts, render_hosts(spec, self._targets)) or changed
            except OSError as exc:
                self.last_error = f"{self.paths.dir}: {exc}"
                log.error("filter: cannot write dnsmasq files: %s", exc)
                return False
            if changed:  # timetable ticks re-send the same policy: no needless cache flush
                self._reload()
        moved = self.spec is None or self.spec.upstreams != spec.upstreams
        self.spec = spec
        if not self.device_ip or moved:
            # The address towards the resolver in use: another one off-site (blocked events carry it).
            self.device_ip = _device_ip(resolvers) or self.device_ip
        self._write_browser(policy, spec, filtering)
        missing = [t for t in spec.targets if not _has_v4(self._targets.get(t))]
        if missing:
            self._resolve_targets(spec.targets)
        return True

    def upstream_dns(self, filtering) -> tuple[list[str], str]:
        """(resolvers, where they are configured) to forward allowed names to: the school's,
        or while the device is off the school network, site.offsite's (agent/uplink/location.py)."""
        tree = self.runtime.tree
        offsite = tree.site.offsite if tree is not None else None
        if offsite is not None and getattr(self.runtime, "network_location", "school") == "offsite":
            return list(offsite.upstream_dns), "offsite.upstream_dns"
        return list(filtering.upstream_dns), "filtering.upstream_dns"

    def _infrastructure(self) -> list[str]:
        """Broker and collector host names: the agent itself must still resolve them."""
        from urllib.parse import urlsplit

        from ..config.schema import is_domain

        urls = [self.runtime.bootstrap.broker_url, self.runtime.bootstrap.collector_url]
        tree = self.runtime.tree
        if tree is not None:
            urls += [tree.site.broker.url, tree.site.collector.url]
            if tree.site.offsite is not None and tree.site.offsite.broker_url:
                urls.append(tree.site.offsite.broker_url)
        hosts = {(urlsplit(u).hostname or "").lower() for u in urls}
        return sorted(h for h in hosts if is_domain(h))

    def _write_browser(self, policy, spec: FilterSpec, filtering) -> None:
        if not self.write_browser:
            return
        # Policy files a pupil (or anyone but the agent) edits are put back by the guard.
        protect = self.protect
        page = self.blockpage
        extension = page.policy(policy.messages, policy.language, volume=policy.sound_volume,
                                sound=policy.sound_play) if page is not None else None
        try:
            browser.write_chromium(self.chromium_dir,
                                   browser.chromium_policy(policy, spec.overrides, block_quic=filtering.block_quic,
                                                           proxy=filtering.browser_proxy, extension=extension,
                                                           extension_urls=page.allow_url() if page else ()),
                                   protect)
        except OSError as exc:
            log.error("filter: cannot write Chromium policy in %s: %s", self.chromium_dir, exc)
        try:
            browser.write_firefox(self.firefox_dir, browser.firefox_policy(policy, spec.overrides, proxy=filtering.browser_proxy),
                                  protect)
        except OSError as exc:
            log.error("filter: cannot write Firefox policy in %s: %s", self.firefox_dir, exc)

    def _apply_nftables(self, filtering) -> None:
        # Root, or the systemd unit's CAP_NET_ADMIN: just try, and say so if it fails.
        permitted = self._apply_nft
        if permitted is None:
            permitted = bool(self.runtime.bootstrap.apply_nftables) and nftables.find_nft() is not None
        if not permitted or not self.dns_enabled or self.dnsmasq is None:
            return
        # Exempt exactly the uid the filtering dnsmasq really runs as (it is the only
        # process that may talk to the upstream): read it back rather than guess.
        uid = _process_uid(self.dnsmasq.pid)
        if uid is None:
            log.error("filter: cannot tell which user dnsmasq runs as: DNS bypass is NOT blocked on this device")
            return
        upstreams = self.spec.upstreams if self.spec is not None else ()
        ruleset = nftables.render(dns_port=self.port, dnsmasq_user=uid, block_quic=filtering.block_quic,
                                  allow_udp_ports=filtering.allow_udp_ports,
                                  upstreams=[u.split("#", 1)[0] for u in upstreams])
        try:
            nftables.apply(ruleset, argv_prefix=self.argv_prefix)
            self.nft_applied = True
            self._nft_upstreams = upstreams
            log.info("filter: nftables table inet %s loaded (DNS redirected to :%d)", nftables.TABLE, self.port)
        except (RuntimeError, OSError) as exc:
            log.error("filter: %s: DNS bypass is NOT blocked on this device", exc)

    def _reload(self) -> None:
        """SIGHUP the filter (re-read servers-file and hosts) and clear the front's cache.

        The front is cleared twice: a query racing the filter's re-read could otherwise
        leave an answer of the old filter in the front's cache for up to a minute."""
        if self.dnsmasq is not None:
            self.dnsmasq.reload()
        if self.front_proc is not None:
            self.front_proc.reload()
            timer = threading.Timer(0.25, self.front_proc.reload)
            timer.daemon = True
            timer.start()

    # ------------------------------------------------------------------ safe search targets
    def _resolve_targets(self, targets) -> None:
        """Look the safe endpoints up through our dnsmasq on a worker thread."""
        if self._resolving or not self.dns_enabled:
            return
        self._resolving = True
        self._resolve_attempt_at = time.monotonic()
        targets = list(targets)

        def work():
            found: dict[str, list[str]] = {}
            deadline = time.monotonic() + 3
            # dnsmasq applies the SIGHUP asynchronously: retry briefly until it knows the target.
            while time.monotonic() < deadline and not self._stop.is_set():
                found = resolve_targets(targets, server=self.listen, port=self.port, timeout=1)
                if all(_has_v4(a) for a in found.values()):
                    break
                self._stop.wait(0.05)
            self.runtime.post(self._targets_resolved, found)

        threading.Thread(target=work, name="filter-resolve", daemon=True).start()

    def _targets_resolved(self, found: dict[str, list[str]]) -> None:
        self._resolving = False
        # Only a complete answer (at least an IPv4 address) replaces what we had: an
        # AAAA-only result after a timeout would leave the engine unusable over IPv4.
        self._targets.update({t: a for t, a in found.items() if _has_v4(a)})
        if self.spec is not None and self.dns_enabled:
            if write_atomic(self.paths.hosts, render_hosts(self.spec, self._targets)):
                self._reload()

    # ------------------------------------------------------------------ commands
    def on_command(self, cmd: dict) -> bool:
        if isinstance(cmd, dict) and cmd.get("cmd") == "filter-check":
            self._command_check(str(cmd.get("by") or "collector")[:64])
            return True
        if not isinstance(cmd, dict) or cmd.get("cmd") != "allow":
            return False
        filtering = self.filtering()
        if filtering is None or self.policy is None:
            self._refuse(cmd, "no filter policy on this device yet")
        now = self.runtime.clock()
        lesson_end = self.policy.next_change if self.policy.in_school_hours else None
        try:
            ov = parse_allow(cmd, now, default_minutes=filtering.override_default_minutes,
                             max_minutes=filtering.override_max_minutes, lesson_end=lesson_end)
        except OverrideError as exc:
            self._refuse(cmd, str(exc))
        previous = self.overrides.put(ov)
        if not self._apply(self.policy, filtering):
            # Put the store back exactly as it was: the filter did not change.
            if previous is not None:
                self.overrides.put(previous)
            else:
                self.overrides.remove(ov.domain)
            self._refuse(cmd, self.last_error or "filter could not be updated")
        self.audit.opened(ov, previous)
        return True

    def _asked(self, domain: str) -> None:
        """A pupil pressed "Ask my teacher" on the block page for *domain* (queue thread)."""
        policy = self.policy or self.runtime.policy
        if policy is None:
            return
        self.runtime.emit_event("unblock_request", domain=domain, user=self.runtime.current_user(),
                                seat=policy.seat, device_name=policy.seat or policy.device,
                                profile=policy.key_stage, profile_name=policy.profile_name)
        log.info("filter: a pupil asked the teacher to open %s", domain)

    def _refuse(self, cmd: dict, reason: str) -> None:
        """Audit a refused override, then tell the runtime (its cmd_result says why)."""
        self.audit.rejected(cmd, reason)
        raise CommandRefused(reason)

    # ------------------------------------------------------------------ ticking
    def _tick(self) -> None:
        """The ticker's turn (queue thread): flush settled blocked events, close expired
        overrides, restart a dnsmasq that died, retry safe-search endpoints."""
        if self.policy is None or self._stop.is_set():
            return
        now = self.runtime.clock()
        self.blocked.flush_due(now)
        gone = self.overrides.expired(now)
        if gone:
            filtering = self.filtering()
            if filtering is None or not self._apply(self.policy, filtering):
                log.error("filter: could not re-apply after closing overrides: %s", self.last_error)
            self.audit.closed(gone, now)   # after the filter really closed
        for proc in (self.dnsmasq, self.front_proc):
            if proc is not None and not proc.is_running:
                log.error("filter: dnsmasq (%s) exited (%s); restarting it", proc.conf.name,
                          proc.proc.returncode if proc.proc else "?")
                try:
                    proc.proc = None
                    proc.start()
                except FilterError as exc:
                    log.error("filter: dnsmasq restart failed: %s", exc)
        if self.spec is not None and self.spec.targets and not self._resolving:
            missing = any(not _has_v4(self._targets.get(t)) for t in self.spec.targets)
            since = time.monotonic() - self._resolve_attempt_at
            # Unresolved endpoints (upstream down at boot) are retried every few seconds;
            # resolved ones are refreshed hourly.
            if (missing and since > TARGET_RETRY_SECONDS) or since > TARGET_REFRESH_SECONDS:
                self._resolve_targets(self.spec.targets)

    # ------------------------------------------------------------------ query log
    def _on_records(self, records: list[Record]) -> None:
        """Follower thread: evidence is recorded here, blocked names go to the queue."""
        now = self.runtime.clock()
        blocked = []
        for r in records:
            if r.kind == "query":
                self.evidence.add(r.name, now)
            elif not self.blocked.is_expected(r.name):
                self.evidence.mark_blocked(r.name)
                # One page = A + AAAA + HTTPS look-ups: count attempts by their A query.
                if r.qtype in ("A", ""):
                    blocked.append(r.name)
        if blocked:
            self.runtime.post(self._on_blocked, blocked, now)

    def _on_blocked(self, names: list[str], now) -> None:
        if self.blocked.add(names, now):
            self.ticker.poke()  # back to tick_seconds while the window is open

    def _emit_blocked(self, batch: Batch) -> None:
        policy = self.policy
        # A high-risk name is tagged with its risk list (risk.py); the collector does the rest.
        category = self.risk.category(batch.domain) if self.risk else None
        self.runtime.emit_event(
            "blocked",
            device_name=policy.seat or policy.device,
            device_ip=self.device_ip,
            user=self.runtime.current_user(),
            domain=batch.domain,
            profile=self.spec.profile if self.spec else policy.key_stage,
            profile_name=policy.profile_name,
            count=batch.count,
            first_seen=now_ts(batch.first_seen),
            last_seen=now_ts(batch.last_seen),
            **({"category": category} if category else {}),
        )

    # ------------------------------------------------------------------ evidence, checks
    def evidence_for(self, minutes: int) -> list[dict]:
        return self.evidence.recent(minutes, self.runtime.clock())

    def run_check(self, by: str, allowed=None, blocked=None) -> dict:
        """Resolve the profile's test domains through our dnsmasq; emit ``filter_check``.

        Call from a worker thread or the CLI path; the event is posted to the queue."""
        policy = self.policy
        if policy is None:
            raise FilterError("no filter policy on this device yet")
        if allowed is None or blocked is None:
            tree = self.runtime.tree
            check = tree.profiles[policy.key_stage].check if tree is not None else None
            allowed = list(check.allowed) if check else []
            blocked = list(check.blocked) if check else []
        self.blocked.expect(blocked, 30)
        try:
            results = check_domains(allowed, blocked, server=self.listen, port=self.port)
        finally:
            self.blocked.expect(blocked, 2)  # the log follower may lag a little behind our queries
        fields = event_fields(results, policy.key_stage, by)
        self.runtime.post(lambda: self.runtime.emit_event("filter_check", **fields))
        return fields

    def _command_check(self, by: str) -> None:
        """The collector's ``filter-check`` cmd (the nightly check, server/filtercheck.py): the
        same check as the control op, on a worker thread (it resolves names: never on the queue)."""
        if not self.dns_enabled or self.policy is None:
            log.warning("filter-check from %s: DNS filtering is not running on this device", by)
            return

        def work() -> None:
            try:
                self.run_check(by)
            except Exception as exc:  # noqa: BLE001 - logged; the missing event is what the server sees
                log.error("filter-check from %s failed: %s", by, exc)

        threading.Thread(target=work, name="filter-check", daemon=True).start()

    def _control_check(self, req: dict) -> dict:
        """Control socket op ``filter-check`` (runs on the control thread, not the queue)."""
        by = req.get("by")
        if not isinstance(by, str) or not by.strip() or len(by) > 64:
            raise ValueError("by: who is checking is required")
        if not self.dns_enabled:
            raise ValueError("DNS filtering is off on this device (dnsmasq not running)")
        try:
            return {"check": self.run_check(by.strip())}
        except FilterError as exc:
            raise ValueError(str(exc)) from None


def _has_v4(addresses) -> bool:
    return any(":" not in a for a in addresses or ())


def _process_uid(pid: int | None) -> int | None:
    """Effective uid of a running process (from /proc), or None."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[2])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _unreachable_for(uid: int, path: Path) -> Path | None:
    """The first directory on the way to *path* that *uid* cannot enter, else None."""
    import grp
    import pwd
    import stat

    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return None
    groups = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}
    for d in [path, *path.parents]:
        try:
            st = d.stat()
        except OSError:
            return d
        if st.st_uid == pw.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return d
    return None


def _device_ip(upstreams) -> str:
    """The address this device uses towards the school network (no packet is sent)."""
    for up in upstreams:
        try:
            family = socket.AF_INET6 if ":" in up else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((up, 53))
                return s.getsockname()[0]
        except OSError:
            continue
    return ""
