"""The staff PIN: its hash (``classroom-agent hash-pin``), its file, and the back-off on wrong tries.

* ``hash_pin`` / ``verify_pin`` -- a salted scrypt hash,
  ``scrypt$N$r$p$<digits>$<salt b64>$<hash b64>``.  A PIN is 6 to 12 digits; the hash
  records how many (``<digits>``), so a check of the file can refuse a short one without
  knowing the PIN.  (An attacker who has the file learns nothing they would not try
  first anyway; the file's secrecy is what protects the PIN.)  Hashes from before the
  6-digit rule (``scrypt$N$r$p$<salt>$<hash>``, 4 digits allowed) still verify, but
  ``check_pin_hash`` refuses them so nobody keeps one by accident.
* ``read_pin_file`` -- the hash lives in its own file (agent.yaml's ``staff_pin_file``,
  default /etc/classroom-safety/staff-pin, 0600, owned by the agent's user), never in
  agent.yaml, whose group may be wider: a file anyone else can read is refused.
* ``PinBackoff`` -- wrong tries cost more and more time: ``FREE_TRIES`` free, then a
  wait that doubles from ``BASE_SECONDS`` up to ``MAX_SECONDS``; forgotten
  ``FORGET_SECONDS`` after the last wrong try.  Wall-clock times, so the wait survives
  a restart or a reboot: the overlays keep one in memory, the agent keeps the device's
  one in its state directory (``PinBackoffFile``) and gives it to every overlay it starts.

Standard library only: the overlays check the PIN themselves, and the Wayland one runs
on Debian's /usr/bin/python3, not the agent's virtualenv (agent/desktop/programs/).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
import threading

__all__ = ["MIN_DIGITS", "MAX_DIGITS", "PinBackoff", "PinBackoffFile", "check_pin_hash", "hash_pin",
           "load_staff_pin", "read_pin_file", "verify_pin"]

MIN_DIGITS = 6
MAX_DIGITS = 12
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_pin(pin: str, *, salt: bytes | None = None) -> str:
    """Salted scrypt hash of a staff PIN, for the staff PIN file."""
    if not isinstance(pin, str) or not pin.isdigit() or not MIN_DIGITS <= len(pin) <= MAX_DIGITS:
        raise ValueError(f"a staff PIN is {MIN_DIGITS} to {MAX_DIGITS} digits")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=_SCRYPT["n"], r=_SCRYPT["r"], p=_SCRYPT["p"], dklen=32)
    b64 = lambda b: base64.b64encode(b).decode().rstrip("=")  # noqa: E731
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${len(pin)}${b64(salt)}${b64(digest)}"


def _parts(stored: str) -> tuple[int, int, int, int | None, str, str]:
    """(n, r, p, digits or None for an old hash, salt b64, digest b64); ValueError if malformed."""
    fields = stored.split("$")
    if len(fields) == 7 and fields[0] == "scrypt":
        _, n, r, p, digits, salt, digest = fields
        return int(n), int(r), int(p), int(digits), salt, digest
    if len(fields) == 6 and fields[0] == "scrypt":
        _, n, r, p, salt, digest = fields
        return int(n), int(r), int(p), None, salt, digest
    raise ValueError("not a hash from `classroom-agent hash-pin`")


def verify_pin(pin: str, stored: str | None) -> bool:
    """Constant-time check of *pin* against a ``hash_pin`` string; False for any malformed input."""
    if not stored or not isinstance(pin, str):
        return False
    try:
        n, r, p, digits, salt_b64, digest_b64 = _parts(stored)
        if digits is not None and len(pin) != digits:
            return False  # the length is in the hash; no need to spend an scrypt on it
        pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
        salt, digest = base64.b64decode(pad(salt_b64)), base64.b64decode(pad(digest_b64))
        got = hashlib.scrypt(pin.encode(), salt=salt, n=n, r=r, p=p, dklen=len(digest))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, digest)


def check_pin_hash(stored: str) -> str:
    """*stored* if it is a hash of a PIN of at least ``MIN_DIGITS`` digits; else ValueError saying why."""
    try:
        n, r, p, digits, salt, digest = _parts(stored.strip())
        if min(n, r, p) < 1 or not salt or not digest:
            raise ValueError
    except ValueError:
        raise ValueError("not a hash from `classroom-agent hash-pin`") from None
    if digits is None:
        raise ValueError(f"made by an older hash-pin that allowed 4-digit PINs; make a new one of "
                         f"{MIN_DIGITS} or more digits with `classroom-agent hash-pin`")
    if digits < MIN_DIGITS:
        raise ValueError(f"the PIN has {digits} digits; a staff PIN needs {MIN_DIGITS} or more")
    return stored.strip()


def read_pin_file(path: str | os.PathLike) -> str:
    """The checked hash in the staff PIN file *path*.  ValueError (one line, naming the
    file) if anyone but its owner may read it or it holds no good hash; OSError if it
    cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: not a regular file")
        if st.st_mode & 0o077:
            raise ValueError(f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets others read the PIN hash; "
                             f"make it 0600, owned by the agent's user")
        text = f.read(4096)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) != 1:
        raise ValueError(f"{path}: expected one line with the hash from `classroom-agent hash-pin`")
    try:
        return check_pin_hash(lines[0])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def load_staff_pin(path: str | os.PathLike | None) -> str | None:
    """The staff PIN hash for the running agent: ``read_pin_file``'s, or None (no file:
    no PIN; a bad or exposed file: no PIN and an error in the log, so staff clear from
    their client until it is fixed)."""
    if not path:
        return None
    try:
        return read_pin_file(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        import logging

        logging.getLogger(__name__).error("staff PIN not used: %s", exc if isinstance(exc, ValueError)
                                          else f"{path}: {exc.strerror or exc}")
        return None


# --------------------------------------------------------------------------- back-off


class PinBackoff:
    """How long the PIN box must refuse tries after wrong ones.  Pure: every method takes
    the wall-clock time ``now`` (seconds since the epoch)."""

    FREE_TRIES = 3          # wrong tries before the first wait (a mistyped PIN or two)
    BASE_SECONDS = 30.0     # the first wait; each further wrong try doubles it...
    MAX_SECONDS = 3600.0    # ...up to an hour
    FORGET_SECONDS = 86400.0  # a day after the last wrong try, start again
    REPORT_EVERY = 5        # the agent reports `tamper` at every 5th wrong try in a row

    def __init__(self, failures: int = 0, locked_until: float = 0.0, last_failure: float = 0.0):
        self.failures = failures
        self.locked_until = locked_until
        self.last_failure = last_failure

    def wait(self, now: float) -> float:
        """Seconds until a try is allowed (0: now)."""
        # Never longer than the longest wait from now: a clock set back must not lock staff out for days.
        return max(0.0, min(self.locked_until - now, self.MAX_SECONDS))

    def failed(self, now: float) -> float:
        """A wrong PIN at *now*; returns the wait it costs."""
        if self.last_failure and now - self.last_failure > self.FORGET_SECONDS:
            self.failures = 0
        self.failures += 1
        self.last_failure = now
        over = self.failures - self.FREE_TRIES
        delay = 0.0 if over < 0 else min(self.MAX_SECONDS, self.BASE_SECONDS * 2 ** over)
        self.locked_until = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.locked_until, self.last_failure = 0, 0.0, 0.0

    @property
    def should_report(self) -> bool:
        """This many wrong tries in a row is someone guessing, not a slip."""
        return self.failures > 0 and self.failures % self.REPORT_EVERY == 0

    def to_dict(self) -> dict:
        return {"failures": self.failures, "locked_until": self.locked_until, "last_failure": self.last_failure}

    @classmethod
    def from_dict(cls, data) -> "PinBackoff":
        if not isinstance(data, dict):
            return cls()
        try:
            return cls(max(0, int(data.get("failures", 0))), float(data.get("locked_until", 0.0)),
                       float(data.get("last_failure", 0.0)))
        except (TypeError, ValueError):
            return cls()


class PinBackoffFile:
    """The device's ``PinBackoff``, kept in a file only the agent can write (its state
    directory), shared by every overlay the agent runs."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = path
        self._lock = threading.Lock()
        self.backoff = PinBackoff()
        if path is not None:
            try:
                with open(path) as f:
                    self.backoff = PinBackoff.from_dict(json.load(f))
            except (OSError, ValueError):
                pass  # none yet, or unreadable: start with no wait rather than none ever

    def snapshot(self) -> dict:
        with self._lock:
            return self.backoff.to_dict()

    def update(self, data: dict) -> PinBackoff:
        """An overlay's state after a try (``pin_wrong`` or ``cleared``): kept and saved."""
        with self._lock:
            self.backoff = PinBackoff.from_dict(data)
            self._save()
            return PinBackoff.from_dict(self.backoff.to_dict())

    def _save(self) -> None:
        if self.path is None:
            return
        from agent.files import atomic_write  # the agent's side only; the overlays never save

        try:
            atomic_write(self.path, json.dumps(self.backoff.to_dict()) + "\n", 0o600)
        except OSError:
            import logging

            logging.getLogger(__name__).warning("cannot save the PIN back-off to %s", self.path, exc_info=True)
