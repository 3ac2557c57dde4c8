"""The login throttle: back-off per (user, address), per address and per user, in fixed memory.

Both ways of logging in (``POST /api/v1/login`` and the dashboard's ``POST /login``) go
through ``auth.attempt_login``, which asks this throttle first and tells it about every
failure, so the form and the API share one budget.

What it must do (issue 14, item 7):

* slow password guessing: each (username, address) gets ``free`` wrong passwords, then
  waits 1 s, 2 s, 4 s ... (at most ``max_wait``) after each further failure;
* slow password spraying: each address (an IPv6 address counts by its /64, which one
  machine usually holds whole) gets ``address_free`` failures over all usernames before
  the same back-off applies to everything it tries;
* slow a guesser spread over many addresses: once a username has ``user_free`` failures
  from anywhere, every address that has itself failed for that username waits the
  user's back-off too;
* never lock a named user out: an address that has not failed for a username is never
  held back on that username's account (only by its own address budget), so the real
  teacher logging in from her own laptop gets in however many guesses an attacker makes
  elsewhere; and every back-off ends by itself (no hard lockout anyone can trigger);
* use fixed memory that flooding cannot reset: failures are counted in count-min sketches
  (``_Sketch``: a fixed table of decaying counters indexed by a keyed hash).  Flooding
  with new usernames or addresses can only *raise* counts (a collision makes some other
  key wait longer, within ``max_wait``), never forget the attacker's own; the hash key
  is random per process, so nobody can aim collisions at a chosen user.

While an attempt is held back the password is not checked at all: otherwise the answer
to the right password (200 instead of 429) would tell the guesser they had found it.
Counts halve every ``half_life`` seconds; a success does not clear them (a sketch cannot
forget one key), which matters little: the legitimate user is only ever held back after
``free`` wrong passwords of their own.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import secrets
import threading
import time
from array import array
from dataclasses import dataclass


def address_key(host: str | None) -> str:
    """The throttle's key for a client address: IPv4 as is, IPv6 by its /64, anything else as text."""
    if not host:
        return "?"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class _Sketch:
    """A count-min sketch of exponentially decaying counters, with each cell's last update time.

    ``add(key, now)`` counts one failure for *key*; ``get(key, now)`` is an upper bound of
    *key*'s decayed count and the time of its last failure.  Memory is ``rows * width`` cells,
    fixed at creation."""

    def __init__(self, width: int, rows: int, half_life: float, salt: bytes) -> None:
        self.width = width
        self.rows = rows
        self.decay = math.log(2) / half_life
        self.salt = salt
        self.count = [array("d", bytes(8 * width)) for _ in range(rows)]
        self.last = [array("d", bytes(8 * width)) for _ in range(rows)]

    def _cells(self, key: str) -> list[int]:
        digest = hashlib.blake2b(key.encode("utf-8", "replace"), key=self.salt, digest_size=4 * self.rows).digest()
        return [int.from_bytes(digest[4 * r:4 * r + 4], "big") % self.width for r in range(self.rows)]

    def _decayed(self, row: int, cell: int, now: float) -> float:
        value = self.count[row][cell]
        return value * math.exp(-self.decay * (now - self.last[row][cell])) if value else 0.0

    def get(self, key: str, now: float) -> tuple[float, float]:
        best, last = math.inf, 0.0
        for row, cell in enumerate(self._cells(key)):
            value = self._decayed(row, cell, now)
            if value < best:
                best, last = value, self.last[row][cell]
        return best, last

    def add(self, key: str, now: float) -> None:
        # Conservative update: raise each cell only as far as this key's new estimate,
        # which keeps collisions from inflating other keys more than they must.
        cells = self._cells(key)
        target = min(self._decayed(row, cell, now) for row, cell in enumerate(cells)) + 1.0
        for row, cell in enumerate(cells):
            if self._decayed(row, cell, now) < target:
                self.count[row][cell] = target
            else:
                self.count[row][cell] = self._decayed(row, cell, now)
            self.last[row][cell] = now


@dataclass(frozen=True)
class Verdict:
    """``allowed``, or how long to wait (``retry_after`` seconds) and ``why``."""

    allowed: bool
    retry_after: int = 0
    why: str = ""


ALLOWED = Verdict(True)


class LoginThrottle:
    """See the module docstring.  ``check(user, address)`` before verifying a password,
    ``failed(user, address)`` after a wrong one."""

    def __init__(self, *, free: int = 5, address_free: int = 30, user_free: int = 20, base: float = 1.0,
                 max_wait: float = 900.0, half_life: float = 3600.0, width: int = 1 << 14, rows: int = 2,
                 clock=time.monotonic) -> None:
        self.free = free
        self.address_free = address_free
        self.user_free = user_free
        self.base = base
        self.max_wait = max_wait
        self.clock = clock
        salt = secrets.token_bytes(16)
        self._pair = _Sketch(width, rows, half_life, salt + b"pair")
        self._address = _Sketch(width, rows, half_life, salt + b"addr")
        self._user = _Sketch(width, rows, half_life, salt + b"user")
        self._lock = threading.Lock()
        # Held-back attempts cost no password check, so they can come fast: write at most
        # AUDIT_PER_MINUTE of them to the audit log (kept for years) per minute.
        self._audit_tokens = float(self.AUDIT_PER_MINUTE)
        self._audit_at = clock()

    AUDIT_PER_MINUTE = 20

    def may_audit(self) -> bool:
        """True if a held-back attempt may be written to the audit log now (a token bucket)."""
        now = self.clock()
        with self._lock:
            self._audit_tokens = min(float(self.AUDIT_PER_MINUTE),
                                     self._audit_tokens + (now - self._audit_at) * self.AUDIT_PER_MINUTE / 60.0)
            self._audit_at = now
            if self._audit_tokens >= 1.0:
                self._audit_tokens -= 1.0
                return True
            return False

    def _wait(self, count: float, free: int) -> float:
        over = count - free
        if over < 0:
            return 0.0
        return min(self.max_wait, self.base * 2 ** min(over, 30.0))

    @staticmethod
    def _pair_key(user: str, address: str) -> str:
        return f"{user}\0{address}"

    def check(self, user: str, address: str) -> Verdict:
        now = self.clock()
        with self._lock:
            waits = []
            pair, pair_last = self._pair.get(self._pair_key(user, address), now)
            waits.append((self._wait(pair, self.free) - (now - pair_last), "this username from this address"))
            count, last = self._address.get(address, now)
            waits.append((self._wait(count, self.address_free) - (now - last), "this address"))
            if pair >= 1.0:  # only an address that has itself failed for this user
                count, last = self._user.get(user, now)
                waits.append((self._wait(count, self.user_free) - (now - last), "this username"))
        wait, why = max(waits)
        if wait <= 0:
            return ALLOWED
        return Verdict(False, max(1, math.ceil(wait)), why)

    def failed(self, user: str, address: str) -> None:
        now = self.clock()
        with self._lock:
            self._pair.add(self._pair_key(user, address), now)
            self._address.add(address, now)
            self._user.add(user, now)

    @property
    def memory_cells(self) -> int:
        """How many counters the throttle holds: fixed, whatever is thrown at it."""
        return sum(s.rows * s.width for s in (self._pair, self._address, self._user))
