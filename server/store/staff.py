"""The ``users`` and ``sessions`` tables: staff accounts and their logins.

Only hashes are stored: an argon2 hash of each password and a SHA-256 of each session
token (server/http/auth.py makes both), so a stolen database holds no usable login.
A session is valid while it has not expired and its user is not disabled.
"""

from __future__ import annotations

from typing import Any

from .schema import utcnow

# What update_user may change.
USER_FIELDS = ("role", "display_name", "password_hash", "disabled")


class StaffTable:
    """Store methods for staff accounts and sessions (mixed into ``Store``)."""

    def add_user(self, username: str, role: str, password_hash: str, display_name: str | None = None) -> None:
        self.execute("INSERT INTO users (username, role, display_name, password_hash, created_at) "
                     "VALUES (?, ?, ?, ?, ?)", (username, role, display_name, password_hash, utcnow()))

    def get_user(self, username: str) -> dict | None:
        return self.query_one("SELECT * FROM users WHERE username = ?", (username,))

    def list_users(self) -> list[dict]:
        return self.query("SELECT username, role, display_name, created_at, disabled FROM users ORDER BY username")

    def update_user(self, username: str, **fields: Any) -> bool:
        fields = {k: v for k, v in fields.items() if k in USER_FIELDS}
        if not fields:
            return self.get_user(username) is not None
        sets = ", ".join(f"{k} = ?" for k in fields)
        return self.execute(f"UPDATE users SET {sets} WHERE username = ?", (*fields.values(), username)) == 1

    def add_session(self, token_hash: str, username: str, expires_at: str) -> None:
        self.execute("INSERT INTO sessions (token_hash, username, created_at, expires_at) VALUES (?, ?, ?, ?)",
                     (token_hash, username, utcnow(), expires_at))

    def get_session(self, token_hash: str, now: str | None = None) -> dict | None:
        return self.query_one(
            "SELECT s.username, s.expires_at, u.role, u.display_name, u.disabled FROM sessions s "
            "JOIN users u ON u.username = s.username WHERE s.token_hash = ? AND s.expires_at > ?",
            (token_hash, now or utcnow()))

    def delete_session(self, token_hash: str) -> int:
        return self.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    def delete_user_sessions(self, username: str) -> int:
        return self.execute("DELETE FROM sessions WHERE username = ?", (username,))
