"""The staff PIN: ``hash_pin`` (``classroom-agent hash-pin``) and ``verify_pin``.

Stored only as a salted scrypt hash, ``scrypt$N$r$p$<salt b64>$<hash b64>``, in
agent.yaml's ``staff_pin_hash``.  Standard library only: the overlays check the PIN
themselves, and the Wayland one runs on Debian's /usr/bin/python3, not the agent's
virtualenv (agent/desktop/programs/).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_pin(pin: str, *, salt: bytes | None = None) -> str:
    """Salted scrypt hash of a staff PIN, as stored in agent.yaml's ``staff_pin_hash``."""
    if not isinstance(pin, str) or not pin.isdigit() or not 4 <= len(pin) <= 12:
        raise ValueError("a staff PIN is 4 to 12 digits")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=_SCRYPT["n"], r=_SCRYPT["r"], p=_SCRYPT["p"], dklen=32)
    b64 = lambda b: base64.b64encode(b).decode().rstrip("=")  # noqa: E731
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt)}${b64(digest)}"


def verify_pin(pin: str, stored: str | None) -> bool:
    """Constant-time check of *pin* against a ``hash_pin`` string; False for any malformed input."""
    if not stored or not isinstance(pin, str):
        return False
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
        salt, digest = base64.b64decode(pad(salt_b64)), base64.b64decode(pad(digest_b64))
        got = hashlib.scrypt(pin.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(digest))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, digest)
