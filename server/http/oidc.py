"""Single sign-on for staff with OpenID Connect (Microsoft Entra ID, Google Workspace, any
certified provider), on Authlib's client.

``serve --oidc FILE`` turns it on; the file (YAML, checked like the config tree:
``file:line: key: message`` with a did-you-mean) names the provider (``issuer``: its
discovery document is read from ``ISSUER/.well-known/openid-configuration``), this
collector's client registration, and the map from the provider's group claim to a school
(site) and role::

    issuer: https://login.microsoftonline.com/TENANT-ID/v2.0
    client_id: 6d1c...                      # the app registration
    client_secret_file: /etc/classroom/oidc-secret
    redirect_url: https://safety.trust.example/auth/oidc/callback
    label: Sign in with Microsoft
    username_claim: preferred_username      # m.khan@trust.example -> m.khan
    domains: [trust.example]
    groups_claim: groups
    groups:
      0b5e...-dsl-penny:      {site: penny-acres, role: dsl}
      91aa...-teachers-penny: {site: penny-acres, role: teacher}
      77c3...-trust-it:       {site: "*", role: trust}

The flow (``OidcLogin``): ``start`` makes state, nonce and a PKCE verifier (S256), keeps
them server-side (``oidc_flows``, one row, ten minutes, used once) bound to a random
cookie on this browser only, and sends the browser to the provider.  ``finish`` takes the
flow back by its state, checks the cookie (so nobody can finish a flow in someone else's
browser: login CSRF), exchanges the code with the verifier, and has Authlib check the ID
token: signature against the provider's keys, issuer, audience, expiry and nonce.  The
account is then the username claim (an e-mail style name only from a listed domain), the
schools and roles are exactly those its groups map to (replaced at every sign-in, so a
leaver removed from a group loses the school at once), a disabled account is refused,
and an account is tied to the provider's subject the first time, so a renamed or reused
identity cannot take over someone else's username.  Failures count against the caller's
address in the login throttle like wrong passwords.

Local accounts keep working next to it (small schools, break-glass admins).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from agent.config.schema import check_id, check_username
from agent.config.tree import did_you_mean, validate_source
from agent.config.yamlsrc import SourceError, load_yaml
from agent.errors import UserError, problems_line

from ..store import iso
from .auth import ROLES, TRUST_ROLE, TRUST_SITE

log = logging.getLogger(__name__)

FLOW_COOKIE = "classroom_oidc"
FLOW_PATH = "/auth/oidc"
FLOW_MINUTES = 10
# One role per school: when a person's groups give several at one school, the first here wins.
ROLE_PRECEDENCE = ("dsl", "admin", "technician", "teacher", "office")


class OidcError(Exception):
    """A sign-in refused; str() is safe to show the person (never a token or secret)."""


class OidcSettingsInvalid(UserError):
    """The ``--oidc`` file has problems: ``errors`` (``file:line: key: message`` each); str()
    is the first and how many more, as the command line shows config problems."""

    def __init__(self, errors: list) -> None:
        self.errors = list(errors)
        super().__init__(problems_line(self.errors, "fix the --oidc file (docs/server.md, single sign-on)"))


# --------------------------------------------------------------------------- settings


class GroupGrant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    site: str
    role: str

    @model_validator(mode="after")
    def _check(self) -> "GroupGrant":
        if self.role not in ROLES:
            raise ValueError(f"role: {self.role!r} is not one of {', '.join(ROLES)}"
                             f"{did_you_mean(self.role, ROLES)}")
        if (self.site == TRUST_SITE) != (self.role == TRUST_ROLE):
            raise ValueError('the trust role goes with site "*", and site "*" only with the trust role')
        if self.site != TRUST_SITE:
            check_id(self.site)
        return self


class OidcSettings(BaseModel):
    """The ``--oidc`` file."""

    model_config = ConfigDict(extra="forbid")

    issuer: str
    client_id: str = Field(min_length=1)
    client_secret_file: str | None = None
    redirect_url: str
    label: str = "Sign in with your school account"
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    username_claim: str = "preferred_username"
    domains: list[str] = Field(default_factory=list)
    groups_claim: str = "groups"
    groups_from_userinfo: bool = False
    groups: dict[str, GroupGrant] = Field(min_length=1)
    _client_secret: str | None = PrivateAttr(default=None)

    @field_validator("issuer", "redirect_url")
    @classmethod
    def _https(cls, value: str, info) -> str:
        loopback = value.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]"))
        if not (value.startswith("https://") or loopback):
            raise ValueError(f"{value!r}: must be an https:// URL (plain http only on this machine, for tests)")
        return value.rstrip("/") if info.field_name == "issuer" else value

    @field_validator("scopes")
    @classmethod
    def _openid(cls, value: list[str]) -> list[str]:
        if "openid" not in value:
            raise ValueError("must include 'openid'")
        return value

    @field_validator("domains")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [d.lower() for d in value]

    @property
    def client_secret(self) -> str | None:
        return self._client_secret

    def __repr__(self) -> str:  # never show the secret in logs
        return f"OidcSettings(issuer={self.issuer!r}, client_id={self.client_id!r}, groups={len(self.groups)})"


def load_oidc_settings(path: str | Path) -> OidcSettings:
    """Read and check the ``--oidc`` file (UserError with ``file:line: key: message``)."""
    source, errors = load_yaml(path)
    settings = None
    if source is not None:
        settings, errors = validate_source(OidcSettings, source)
    if errors:
        raise OidcSettingsInvalid(errors)
    if settings.client_secret_file:
        try:
            secret = Path(settings.client_secret_file).read_text().strip()
        except OSError as exc:
            line = source.line_of(("client_secret_file",))
            raise OidcSettingsInvalid([SourceError(str(path), line, "client_secret_file",
                                                   exc.strerror or str(exc))]) from None
        settings._client_secret = secret or None
    return settings


# --------------------------------------------------------------------------- the flow


@dataclass(frozen=True)
class Identity:
    """Who the provider says signed in, and what this collector makes of it."""

    username: str
    subject: str
    display_name: str | None
    sites: dict[str, str]


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()


class _Framework:
    """What Authlib's app classes expect of a web framework: nothing to store here (the
    flow is kept in the store, bound to the browser by our own cookie)."""

    @staticmethod
    def update_token(*args, **kwargs) -> None:
        pass


def _client_class():
    from authlib.integrations.base_client import BaseApp, OAuth2Mixin, OpenIDMixin
    from authlib.integrations.requests_client import OAuth2Session

    class Client(OAuth2Mixin, OpenIDMixin, BaseApp):
        client_cls = OAuth2Session

    return Client


class OidcLogin:
    """The sign-on flow over one provider (``app.state.oidc``)."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self.client = _client_class()(
            _Framework(), name="oidc", client_id=settings.client_id, client_secret=settings.client_secret,
            server_metadata_url=f"{settings.issuer}/.well-known/openid-configuration",
            client_kwargs={"scope": " ".join(settings.scopes), "code_challenge_method": "S256",
                           "default_timeout": 10,
                           "token_endpoint_auth_method": "client_secret_post" if settings.client_secret
                           else "none"})

    def _metadata(self) -> dict:
        try:
            metadata = self.client.load_server_metadata()
        except Exception as exc:  # noqa: BLE001 - the provider is down or misconfigured
            log.warning("oidc: cannot read %s's discovery document: %s", self.settings.issuer, exc)
            raise OidcError("the sign-in service cannot be reached; try again, or log in with a password") from None
        # A provider must speak for itself (no mix-up with another issuer's tokens).
        if metadata.get("issuer", "").rstrip("/") != self.settings.issuer:
            log.error("oidc: discovery document names issuer %r, not %r", metadata.get("issuer"), self.settings.issuer)
            raise OidcError("the sign-in service is not set up correctly; ask the trust's IT")
        return metadata

    def start(self, store, next_path: str | None) -> tuple[str, str]:
        """(the provider's authorization URL, this browser's flow cookie value)."""
        self._metadata()
        made = self.client.create_authorization_url(redirect_uri=self.settings.redirect_url)
        browser = secrets.token_urlsafe(32)
        expires = iso(datetime.now(timezone.utc) + timedelta(minutes=FLOW_MINUTES))
        store.add_oidc_flow(_hash(made["state"]), _hash(browser), made["nonce"], made["code_verifier"], next_path,
                            expires)
        return made["url"], browser

    def finish(self, store, params: dict[str, str], browser: str | None) -> tuple[Identity, str | None]:
        """Check the provider's answer; (who signed in, where they were going).  OidcError if not."""
        if params.get("error"):
            raise OidcError(f"the sign-in service said: {params.get('error_description') or params['error']}"[:300])
        state, code = params.get("state"), params.get("code")
        if not state or not code:
            raise OidcError("that sign-in link is not complete; start again")
        flow = store.take_oidc_flow(_hash(state))
        if flow is None:
            raise OidcError("that sign-in has expired or was already used; start again")
        if not browser or not hmac.compare_digest(flow["browser_hash"], _hash(browser)):
            raise OidcError("that sign-in was started in another browser; start again here")
        self._metadata()
        try:
            token = self.client.fetch_access_token(redirect_uri=self.settings.redirect_url, code=code,
                                                   code_verifier=flow["code_verifier"])
            claims = dict(self.client.parse_id_token(token, nonce=flow["nonce"]))
            if self.settings.groups_from_userinfo and self.settings.groups_claim not in claims:
                info = self.client.userinfo(token=token)
                if info.get("sub") == claims.get("sub"):
                    claims[self.settings.groups_claim] = info.get(self.settings.groups_claim)
        except OidcError:
            raise
        except Exception as exc:  # noqa: BLE001 - authlib/joserfc/requests errors: one line, no token
            log.warning("oidc: sign-in refused: %s: %s", type(exc).__name__, str(exc)[:200])
            raise OidcError("the sign-in could not be checked; start again") from None
        return self.identity(claims), flow["next_path"]

    def identity(self, claims: dict[str, Any]) -> Identity:
        """The account, schools and roles for verified ID token *claims*."""
        s = self.settings
        raw = claims.get(s.username_claim)
        if not isinstance(raw, str) or not raw:
            raise OidcError(f"the sign-in service sent no {s.username_claim}; ask the trust's IT")
        name = raw.strip().lower()
        if "@" in name:
            local, _, domain = name.partition("@")
            if domain not in s.domains:
                raise OidcError(f"accounts from {domain!r} cannot sign in here")
            name = local
        try:
            check_username(name)
        except ValueError:
            raise OidcError(f"{raw!r} cannot be a staff username here (letters, digits, '.', '_', '-')") from None
        groups = claims.get(s.groups_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        sites: dict[str, str] = {}
        for group in groups if isinstance(groups, list) else []:
            grant = s.groups.get(group) if isinstance(group, str) else None
            if grant is None:
                continue
            held = sites.get(grant.site)
            if held is None or _rank(grant.role) < _rank(held):
                sites[grant.site] = grant.role
        display = claims.get("name") if isinstance(claims.get("name"), str) else None
        return Identity(name, f"{claims.get('iss')} {claims.get('sub')}", display[:120] if display else None, sites)


def _rank(role: str) -> int:
    return ROLE_PRECEDENCE.index(role) if role in ROLE_PRECEDENCE else len(ROLE_PRECEDENCE)


def sign_in(store, identity: Identity) -> None:
    """Make the store agree with the provider: create the account on first sign-in, refuse
    a disabled one or one tied to another identity, and set its schools from the groups.
    OidcError if the person may not sign in."""
    if not identity.sites:
        raise OidcError("your account is not in any group that gives access here; ask your school's admin")
    row = store.get_user(identity.username)
    if row is None:
        # No password: this account signs in by single sign-on only.
        store.add_user(identity.username, next(iter(identity.sites.values())), "", identity.display_name)
        row = store.get_user(identity.username)
    if row["disabled"]:
        raise OidcError("this account has been disabled; ask your school's admin")
    if not store.bind_oidc_subject(identity.username, identity.subject):
        raise OidcError("this username belongs to another sign-in; ask the trust's IT")
    store.replace_sso_sites(identity.username, identity.sites)
