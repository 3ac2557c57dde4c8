"""Follow dnsmasq's query log (``log-queries`` + ``log-facility=<file>``) and parse it.

dnsmasq writes one line per step of every query::

    Nov 24 09:06:14 dnsmasq[11388]: query[A] facebook.com from 127.0.0.1
    Nov 24 09:06:14 dnsmasq[11388]: config facebook.com is NXDOMAIN
    Nov 24 09:06:14 dnsmasq[11388]: forwarded bbc.co.uk to 10.20.0.1
    Nov 24 09:06:14 dnsmasq[11388]: reply bbc.co.uk is 192.0.2.10

Only two kinds matter to the agent: ``query[...]`` (a domain was looked up: evidence)
and ``config NAME is NXDOMAIN`` (the allowlist refused it: a blocked attempt).  The
follower is a tail thread that survives rotation: when the file grows past
``max_bytes`` it renames it to ``.1`` and asks dnsmasq (SIGUSR2) to reopen its log.
Until dnsmasq has reopened it (the new file appears) dnsmasq still writes to the old one,
so the follower reads the old one until then, and to its end once more, before it turns
to the new one: no line of a rotation is lost.
At the end of the file it sleeps on inotify (inotify_simple) on the log's directory
(the file itself is renamed on rotation) and on an eventfd that stop() writes, with a
long timeout as a safety net: polling ten times a second was most of an idle agent's
CPU.  Without inotify it polls.
"""

from __future__ import annotations

import logging
import os
import re
import select
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

_QUERY = re.compile(r"dnsmasq\[\d+\]: (?:\d+ \S+ )?query\[([A-Za-z0-9]+)\] (\S+) from (\S+)")
_CONFIG = re.compile(r"dnsmasq\[\d+\]: (?:\d+ \S+ )?config (\S+) is (\S+)")

# Names the device asks about by itself; never a pupil's attempt.
_NOISE_SUFFIXES = (".arpa", ".local", ".lan", ".localdomain", ".internal", ".invalid", ".test")
CANARY = "use-application-dns.net"


@dataclass(frozen=True)
class Record:
    kind: str           # "query" | "blocked"
    name: str
    qtype: str = ""
    client: str = ""


def is_noise(name: str) -> bool:
    return "." not in name or name.endswith(_NOISE_SUFFIXES) or name == CANARY


def parse_line(line: str) -> Record | None:
    """One dnsmasq log line -> Record, or None for lines the agent does not use."""
    # Cheap substring tests first: most lines are forwarded/reply/cached.
    if "query[" in line:
        m = _QUERY.search(line)
        if m:
            name = m.group(2).lower().rstrip(".")
            return None if is_noise(name) else Record("query", name, m.group(1), m.group(3))
    elif "config " in line and "NXDOMAIN" in line:
        m = _CONFIG.search(line)
        if m and m.group(2) == "NXDOMAIN":
            name = m.group(1).lower().rstrip(".")
            return None if is_noise(name) else Record("blocked", name)
    return None


def with_qtypes(records: list[Record], last_qtype: dict[str, str]) -> list[Record]:
    """Give each ``blocked`` record the type of the query it answers.

    dnsmasq writes ``config NAME is NXDOMAIN`` right after that query's ``query[TYPE]``
    line, without the type; a browser asks A, AAAA and HTTPS for one page, so the type
    tells one attempt from three look-ups."""
    out = []
    for r in records:
        if r.kind == "query":
            if len(last_qtype) > 4096:
                last_qtype.clear()  # bounded; a lost type only makes one record untyped
            last_qtype[r.name] = r.qtype
        elif r.kind == "blocked" and not r.qtype:
            r = Record("blocked", r.name, last_qtype.get(r.name, ""), r.client)
        out.append(r)
    return out


class QueryLogFollower:
    """Tail *path* on a thread and hand parsed records, in batches, to *on_records*."""

    def __init__(self, path: str | Path, on_records: Callable[[list[Record]], None], *,
                 poll_seconds: float = 0.1, idle_seconds: float = 5.0, max_bytes: int = 8 * 1024 * 1024,
                 on_rotate: Callable[[], None] | None = None, from_end: bool = True):
        self.path = Path(path)
        self.on_records = on_records
        self.poll_seconds = poll_seconds
        self.idle_seconds = idle_seconds
        self._inotify = None
        self._wake: int | None = None  # eventfd: stop() wakes a thread asleep on inotify
        self.max_bytes = max_bytes
        self.on_rotate = on_rotate
        self.from_end = from_end
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lines_read = 0
        self._last_qtype: dict[str, str] = {}

    def start(self) -> None:
        self._stop.clear()
        # Position at the end now, not in the thread: lines written after start() count.
        self._initial = self._open(self.from_end)
        self._inotify = self._watch()  # before the thread reads: no change slips between
        if self._inotify is not None:
            self._wake = os.eventfd(0, os.EFD_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="filter-querylog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._wake is not None:
            os.eventfd_write(self._wake, 1)
        if self._thread is not None:
            self._thread.join(5)
            if self._thread.is_alive():
                return  # stuck in a handler: leave it its descriptors rather than close them under it
            self._thread = None
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self._wake is not None:
            os.close(self._wake)
            self._wake = None

    def _watch(self):
        try:
            from inotify_simple import INotify, flags

            watch = INotify()
            watch.add_watch(str(self.path.parent), flags.MODIFY | flags.ATTRIB | flags.CREATE | flags.DELETE
                            | flags.MOVED_FROM | flags.MOVED_TO)
            return watch
        except (ImportError, OSError) as exc:
            log.info("query log: no inotify (%s); polling every %gs", exc, self.poll_seconds)
            return None

    def _idle(self) -> None:
        """At the end of the file: wait for the log's directory to change, or for stop()."""
        if self._inotify is None:
            self._stop.wait(self.poll_seconds)
            return
        ready, _, _ = select.select([self._inotify, self._wake], [], [], self.idle_seconds)
        if self._inotify in ready:
            self._inotify.read(timeout=0)  # drain: the loop re-reads the file whatever changed

    def _open(self, from_end: bool):
        try:
            fh = open(self.path, "r", errors="replace")
        except OSError:
            return None, None
        if from_end:
            fh.seek(0, os.SEEK_END)
        return fh, os.fstat(fh.fileno()).st_ino

    def _run(self) -> None:
        fh, inode = self._initial
        partial = ""
        while not self._stop.is_set():
            if fh is None:
                fh, inode = self._open(False)
                if fh is None:
                    self._stop.wait(self.poll_seconds)
                    continue
            chunk = fh.read(1 << 16)
            if chunk:
                data = partial + chunk
                lines = data.split("\n")
                partial = lines.pop()
                self._deliver(lines)
                continue
            # At EOF: was the file rotated or truncated under us?
            try:
                st = os.stat(self.path)
            except OSError:
                st = None
            if st is None:
                # Renamed, not reopened yet: dnsmasq goes on writing to the old file until it
                # acts on SIGUSR2, which creates the new one.  Keep reading the old one until
                # then (a blocked attempt in that moment was lost when it was closed here).
                self._idle()
                continue
            if st.st_ino != inode:
                # dnsmasq has reopened (the new file exists): nothing more comes to the old
                # one.  Whatever it wrote there last, then the new file from its start.
                self._deliver((partial + fh.read()).split("\n"))
                fh.close()
                fh, inode, partial = None, None, ""
                continue
            if st.st_size < fh.tell():
                fh.seek(0)
                partial = ""
                continue
            if self.on_rotate is not None and st.st_size > self.max_bytes:
                self._rotate()
                continue
            self._idle()
        if fh is not None:
            fh.close()

    def _deliver(self, lines: list[str]) -> None:
        self.lines_read += len(lines)
        records = with_qtypes([r for r in map(parse_line, lines) if r is not None], self._last_qtype)
        if records:
            try:
                self.on_records(records)
            except Exception:  # noqa: BLE001 - the follower must outlive a bad handler
                log.exception("query log handler failed")

    def _rotate(self) -> None:
        """Keep one old file; dnsmasq reopens the log on SIGUSR2."""
        try:
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self.on_rotate()
        except OSError as exc:
            log.warning("cannot rotate %s: %s", self.path, exc)
