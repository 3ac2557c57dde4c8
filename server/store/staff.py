"""The ``users``, ``staff_sites``, ``sessions`` and ``oidc_flows`` tables: staff accounts,
the schools they belong to, their logins and their single sign-on flows.

Only hashes are stored: an argon2 hash of each password and a SHA-256 of each session
token (server/http/auth.py makes both), so a stolen database holds no usable login.
A session is valid while it has not expired and its user is not disabled.

Tenancy: an account belongs to one or more sites (schools) with a role in each
(``staff_sites``); ``*`` is the trust level.  ``users.role`` is only the role the account
was created with, which ``adopt_single_site`` turns into a membership of a single-school
install's one site; who may do what is always read from ``staff_sites``.  A session acts
in one site at a time (``sessions.site``, changed by the site switcher).  Memberships
from single sign-on (``source = 'oidc'``) are replaced at every sign-in from the group
claim; those an admin granted (``'local'``) are left alone by it.
"""

from __future__ import annotations

from typing import Any, Mapping

from .engine import Tx
from .schema import utcnow

# What update_user may change.
USER_FIELDS = ("role", "display_name", "password_hash", "disabled")
# The trust level's pseudo-site: totals and health of every school.
TRUST_SITE = "*"


class StaffTable:
    """Store methods for staff accounts, memberships and sessions (mixed into ``Store``)."""

    # ------------------------------------------------------------------ accounts

    def add_user(self, username: str, role: str, password_hash: str, display_name: str | None = None,
                 sites: Mapping[str, str] | None = None, source: str = "local") -> None:
        """A new account; *sites* ``{site: role}`` are its memberships (none: see
        ``adopt_single_site``)."""
        now = utcnow()

        def run(tx: Tx) -> None:
            tx.execute("INSERT INTO users (username, role, display_name, password_hash, created_at) "
                       "VALUES (?, ?, ?, ?, ?)", (username, role, display_name, password_hash, now))
            for site, site_role in (sites or {}).items():
                _grant(tx, username, site, site_role, source, now)

        self.write(run)

    def get_user(self, username: str) -> dict | None:
        return self.query_one("SELECT * FROM users WHERE username = ?", (username,))

    def list_users(self, site: str | None = None) -> list[dict]:
        """Accounts with their memberships (``sites``: {site: role}), last sign-in and state.
        With *site*, only the accounts that belong to it, and only that membership shown."""
        cols = ("u.username, u.display_name, u.created_at, u.disabled, u.last_login_at, u.last_login_via, "
                "u.oidc_subject IS NOT NULL AS sso")
        if site is None:
            rows = self.query(f"SELECT {cols} FROM users u ORDER BY u.username")
            members = self.query("SELECT username, site, role, source FROM staff_sites ORDER BY site")
        else:
            rows = self.query(f"SELECT {cols} FROM users u WHERE EXISTS (SELECT 1 FROM staff_sites m "
                              "WHERE m.username = u.username AND m.site = ?) ORDER BY u.username", (site,))
            members = self.query("SELECT username, site, role, source FROM staff_sites WHERE site = ?", (site,))
        by_user: dict[str, dict] = {}
        for m in members:
            by_user.setdefault(m["username"], {})[m["site"]] = {"role": m["role"], "source": m["source"]}
        for row in rows:
            row["sso"] = bool(row["sso"])
            row["sites"] = by_user.get(row["username"], {})
        return rows

    def update_user(self, username: str, **fields: Any) -> bool:
        fields = {k: v for k, v in fields.items() if k in USER_FIELDS}
        if not fields:
            return self.get_user(username) is not None
        sets = ", ".join(f"{k} = ?" for k in fields)
        return self.execute(f"UPDATE users SET {sets} WHERE username = ?", (*fields.values(), username)) == 1

    def record_login(self, username: str, via: str) -> None:
        """Last sign-in, for the access reviews the policies ask for (policy 000 §7.5.1)."""
        self.execute("UPDATE users SET last_login_at = ?, last_login_via = ? WHERE username = ?",
                     (utcnow(), via, username))

    def bind_oidc_subject(self, username: str, subject: str) -> bool:
        """Tie *username* to the identity provider's ``iss sub`` on its first sign-in; False
        if it is already tied to another (a renamed or reused identity must not inherit it)."""

        def run(tx: Tx) -> bool:
            row = tx.query_one("SELECT oidc_subject FROM users WHERE username = ?", (username,))
            if row is None:
                return False
            if row["oidc_subject"] is None:
                tx.execute("UPDATE users SET oidc_subject = ? WHERE username = ?", (subject, username))
                return True
            return row["oidc_subject"] == subject

        return self.write(run)

    # ------------------------------------------------------------------ memberships

    def memberships(self, username: str) -> dict[str, str]:
        """{site: role} of an account (``*`` = the trust level)."""
        rows = self.query("SELECT site, role FROM staff_sites WHERE username = ? ORDER BY site", (username,))
        return {r["site"]: r["role"] for r in rows}

    def grant_site(self, username: str, site: str, role: str, source: str = "local") -> None:
        """Give *username* *role* at *site* (replacing the role it had there)."""
        self.write(lambda tx: _grant(tx, username, site, role, source, utcnow()))

    def revoke_site(self, username: str, site: str) -> bool:
        return self.execute("DELETE FROM staff_sites WHERE username = ? AND site = ?", (username, site)) == 1

    def replace_sso_sites(self, username: str, sites: Mapping[str, str]) -> None:
        """The identity provider's word at sign-in: its memberships become exactly *sites*
        (a site an admin granted locally keeps the local grant)."""
        now = utcnow()

        def run(tx: Tx) -> None:
            tx.execute("DELETE FROM staff_sites WHERE username = ? AND source = 'oidc'", (username,))
            local = {r["site"] for r in tx.query("SELECT site FROM staff_sites WHERE username = ?", (username,))}
            for site, role in sites.items():
                if site not in local:
                    _grant(tx, username, site, role, "oidc", now)

        self.write(run)

    def adopt_single_site(self, site: str) -> dict[str, int]:
        """A single-school install keeps working with no setup: accounts with no membership
        get *site* with the role they were created with, and rows written before tenancy
        (technician alerts, enrolment tokens, rollouts, digest runs) get *site*.  Returns
        rows changed per table.  Only ever called when the collector serves one site."""
        now = utcnow()

        def run(tx: Tx) -> dict[str, int]:
            done = {"staff_sites": tx.execute(
                "INSERT INTO staff_sites (username, site, role, source, granted_at) "
                "SELECT u.username, CASE WHEN u.role = 'trust' THEN '*' ELSE ? END, u.role, 'local', ? FROM users u "
                "WHERE NOT EXISTS "
                "(SELECT 1 FROM staff_sites m WHERE m.username = u.username)", (site, now))}
            for table in ("device_alerts", "enrol_tokens", "rollouts"):
                done[table] = tx.execute(f"UPDATE {table} SET site = ? WHERE site IS NULL", (site,))
            done["report_runs"] = tx.execute("UPDATE report_runs SET site = ? WHERE site = '' AND NOT EXISTS "
                                             "(SELECT 1 FROM report_runs r2 WHERE r2.site = ? AND "
                                             "r2.week = report_runs.week)", (site, site))
            return {k: v for k, v in done.items() if v and v > 0}

        return self.write(run)

    # ------------------------------------------------------------------ sessions

    def add_session(self, token_hash: str, username: str, expires_at: str, site: str | None = None) -> None:
        self.execute("INSERT INTO sessions (token_hash, username, created_at, expires_at, site) "
                     "VALUES (?, ?, ?, ?, ?)", (token_hash, username, utcnow(), expires_at, site))

    def get_session(self, token_hash: str, now: str | None = None) -> dict | None:
        """The session with its account (``role`` and ``display_name``, ``disabled``) and the
        site it acts in (``site``, None until one is chosen)."""
        return self.query_one(
            "SELECT s.username, s.expires_at, s.site, u.role, u.display_name, u.disabled FROM sessions s "
            "JOIN users u ON u.username = s.username WHERE s.token_hash = ? AND s.expires_at > ?",
            (token_hash, now or utcnow()))

    def set_session_site(self, token_hash: str, site: str) -> bool:
        return self.execute("UPDATE sessions SET site = ? WHERE token_hash = ?", (site, token_hash)) == 1

    def delete_session(self, token_hash: str) -> int:
        return self.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    def delete_user_sessions(self, username: str) -> int:
        return self.execute("DELETE FROM sessions WHERE username = ?", (username,))

    # ------------------------------------------------------------------ single sign-on flows

    def add_oidc_flow(self, state_hash: str, browser_hash: str, nonce: str, code_verifier: str,
                      next_path: str | None, expires_at: str) -> None:
        self.execute("INSERT INTO oidc_flows (state_hash, browser_hash, nonce, code_verifier, next_path, "
                     "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (state_hash, browser_hash, nonce, code_verifier, next_path, utcnow(), expires_at))

    def take_oidc_flow(self, state_hash: str, now: str | None = None) -> dict | None:
        """The flow for *state_hash*, deleted as it is read (a state works once); None if
        unknown or expired."""
        now = now or utcnow()

        def run(tx: Tx) -> dict | None:
            row = tx.query_one("SELECT * FROM oidc_flows WHERE state_hash = ?", (state_hash,))
            if row is None or tx.execute("DELETE FROM oidc_flows WHERE state_hash = ?", (state_hash,)) != 1:
                return None
            return row if row["expires_at"] > now else None

        return self.write(run)


def _grant(tx: Tx, username: str, site: str, role: str, source: str, now: str) -> None:
    tx.execute("INSERT INTO staff_sites (username, site, role, source, granted_at) VALUES (?, ?, ?, ?, ?) "
               "ON CONFLICT (username, site) DO UPDATE SET role = excluded.role, source = excluded.source, "
               "granted_at = excluded.granted_at", (username, site, role, source, now))
