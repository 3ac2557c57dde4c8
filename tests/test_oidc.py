"""Single sign-on for staff against a real OpenID Connect provider (tests/oidc_provider.py, a
separate process built from Authlib's server parts), with the browser flow in headless Chromium.

The collector is the real app on a real port (uvicorn); every flow goes through the
provider's sign-in form, its code grant with PKCE and its signed ID tokens.  Checked:
the school and role come from the group claim; a disabled account, an account in no
mapped group, an account from another domain and one whose username another identity
holds are refused; state is single-use and bound to the browser that started it; a
changed nonce or PKCE verifier fails; failures are throttled; ``/users`` shows the last
sign-in; the settings file gives ``file:line`` errors.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from urllib.parse import urljoin

import pytest

from server_fixtures import *  # noqa: F401,F403
from server_fixtures import PASSWORD, SITE, add_staff
from services import require_binary, skip_or_fail, wait_until
from web_fixtures import LiveServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CLIENT_ID, CLIENT_SECRET = "classroom-collector", "s3cret-client-value"
IDP_PASSWORD = "idp-pass-123"
USERS = {
    "s.patel": {"groups": ["g-dsl-penny", "g-teachers-penny"], "name": "Sita Patel"},
    "m.khan": {"groups": ["g-teachers-penny"], "name": "Mo Khan"},
    "leaver": {"groups": ["g-teachers-penny"], "name": "A Leaver"},
    "nogroup": {"groups": ["g-unrelated"], "name": "No Group"},
    "trust.it": {"groups": ["g-trust"], "name": "Trust IT"},
}


def _idp_users() -> dict:
    out = {name: {"password": IDP_PASSWORD, "sub": f"sub-{name}", "preferred_username": f"{name}@trust.example",
                  **info} for name, info in USERS.items()}
    out["outsider"] = {"password": IDP_PASSWORD, "sub": "sub-outsider", "preferred_username": "x@elsewhere.example",
                       "groups": ["g-dsl-penny"], "name": "Outsider"}
    out["impostor"] = {"password": IDP_PASSWORD, "sub": "sub-impostor", "preferred_username": "s.patel@trust.example",
                       "groups": ["g-dsl-penny"], "name": "Not Sita"}
    return out


def oidc_file(tmp_path, issuer: str, redirect: str):
    secret = tmp_path / "oidc-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    path = tmp_path / "oidc.yaml"
    path.write_text(f"""\
issuer: {issuer}
client_id: {CLIENT_ID}
client_secret_file: {secret}
redirect_url: {redirect}
label: Sign in with the Trust
username_claim: preferred_username
domains: [trust.example]
groups:
  g-dsl-penny: {{site: {SITE}, role: dsl}}
  g-teachers-penny: {{site: {SITE}, role: teacher}}
  g-trust: {{site: "*", role: trust}}
""")
    return path


class SSO:
    def __init__(self, store, app, server, idp):
        self.store, self.app, self.server, self.idp = store, app, server, idp

    @property
    def url(self) -> str:
        return self.server.url

    def flow(self, username: str, password: str = IDP_PASSWORD, *, session=None, tamper=None):
        """Sign in over HTTP as a browser would; the callback's answer (not followed)."""
        import requests

        s = session or requests.Session()
        r = s.get(f"{self.url}/auth/oidc/login", allow_redirects=False, timeout=10)
        assert r.status_code == 303, r.text
        form = s.get(r.headers["location"], timeout=10)
        assert form.status_code == 200, form.text
        action = re.search(r'action="([^"]+)"', form.text).group(1).replace("&amp;", "&")
        back = s.post(urljoin(r.headers["location"], action), data={"username": username, "password": password},
                      allow_redirects=False, timeout=10)
        assert back.status_code == 302, back.text
        callback = back.headers["location"]
        if tamper:
            tamper(self.store)
        return s, callback, s.get(callback, allow_redirects=False, timeout=10)


@pytest.fixture
def sso(sqlite_store, tmp_path, tree):
    from server.http.app import Settings, create_app
    from server.http.oidc import OidcLogin, load_oidc_settings
    from oidc_provider import OidcProvider

    add_staff(sqlite_store, "head", "admin")
    add_staff(sqlite_store, "leaver", "teacher")
    sqlite_store.update_user("leaver", disabled=1)
    app = create_app(Settings(db_url="unused", cookie_secure=False), store=sqlite_store, tree=tree)
    server = LiveServer(app)
    redirect = f"{server.url}/auth/oidc/callback"
    idp = OidcProvider(tmp_path, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uri=redirect,
                       users=_idp_users())
    app.state.oidc = OidcLogin(load_oidc_settings(oidc_file(tmp_path, idp.issuer, redirect)))
    idp.start()
    server.start()
    yield SSO(sqlite_store, app, server, idp)
    server.stop()
    idp.stop()


# --------------------------------------------------------------------------- in Chromium


@pytest.fixture
def browser():
    chromium = require_binary("chromium")
    chromedriver = require_binary("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        skip_or_fail("selenium is not installed (pip install -e '.[test]')")
    profile = tempfile.mkdtemp(prefix="chromium-sso-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _find(driver, element_id: str, timeout: float = 10.0):
    from selenium.webdriver.common.by import By

    return wait_until(lambda: driver.find_elements(By.ID, element_id), timeout=timeout,
                      message=lambda: f"#{element_id} not on {driver.current_url}")[0]


def test_staff_sign_in_with_the_identity_provider_in_chromium(sso, browser):
    """The whole browser flow: the collector's login page, the provider's form, back to the
    collector signed in as the DSL the group claim says, then the admin sees the sign-in."""
    browser.get(sso.url + "/incidents")
    wait_until(lambda: "/login" in browser.current_url, timeout=10)
    _find(browser, "sso-login").click()
    wait_until(lambda: browser.current_url.startswith(sso.idp.issuer), timeout=10,
               message=lambda: f"not at the provider: {browser.current_url}")
    assert "code_challenge_method=S256" in browser.current_url and "nonce=" in browser.current_url
    _find(browser, "idp-username").send_keys("s.patel")
    _find(browser, "idp-password").send_keys(IDP_PASSWORD)
    _find(browser, "idp-submit").click()
    wait_until(lambda: browser.current_url == sso.url + "/incidents", timeout=15,
               message=lambda: f"not back on the incidents page: {browser.current_url}")
    header = _find(browser, "school-name").text
    assert header == "Penny Acres Primary School"
    assert "Sita Patel (dsl)" in browser.page_source
    cookies = {c["name"]: c for c in browser.get_cookies()}
    assert cookies["classroom_session"]["httpOnly"] and cookies["classroom_session"]["sameSite"] == "Strict"
    assert "classroom_oidc" not in cookies  # the flow cookie is gone

    user = sso.store.get_user("s.patel")
    assert user["oidc_subject"] == f"{sso.idp.issuer} sub-s.patel" and user["last_login_via"] == "oidc"
    assert sso.store.memberships("s.patel") == {SITE: "dsl"}  # the DSL group outranks the teachers'
    assert "Sita Patel" == user["display_name"]

    # The admin's access review shows it (and a local account's "never").
    browser.get(sso.url + "/login")
    browser.delete_all_cookies()
    browser.get(sso.url + "/login")
    _find(browser, "username").send_keys("head")
    _find(browser, "password").send_keys(PASSWORD)
    _find(browser, "login-submit").click()
    wait_until(lambda: "/devices" in browser.current_url, timeout=10)
    browser.get(sso.url + "/users")
    row = _find(browser, "user-s.patel").text
    assert "single sign-on" in row and "oidc" in row and "dsl" in row
    assert "never" in _find(browser, "user-leaver").text


# --------------------------------------------------------------------------- refusals (HTTP, same provider)


def test_teacher_gets_her_school_and_rooms(sso):
    session, _, r = sso.flow("m.khan")
    assert r.status_code == 200 and 'content="0;url=/rooms/5b"' in r.text
    assert r.cookies.get("classroom_session") and "classroom_oidc" not in session.cookies
    me = session.get(f"{sso.url}/api/v1/me", timeout=10).json()
    assert (me["role"], me["site"], me["rooms"]) == ("teacher", SITE, ["5b"])


def test_trust_group_gives_the_trust_level(sso):
    session, _, r = sso.flow("trust.it")
    assert r.status_code == 200 and "url=/trust" in r.text
    assert session.get(f"{sso.url}/api/v1/incidents", timeout=10).status_code == 403


@pytest.mark.parametrize("who, why", [
    ("leaver", "disabled"),
    ("nogroup", "not in any group"),
    ("outsider", "cannot sign in here"),
])
def test_refused_accounts_get_no_session(sso, who, why):
    session, _, r = sso.flow(who)
    assert r.status_code == 403 and why in r.text
    assert "classroom_session" not in session.cookies
    assert session.get(f"{sso.url}/api/v1/me", timeout=10).status_code == 401
    refused = [e for e in sso.store.list_audit(action="login.refused")]
    assert refused and why in refused[0]["details"]


def test_a_username_stays_with_its_first_identity(sso):
    assert sso.flow("s.patel")[2].status_code == 200
    _, _, r = sso.flow("impostor")  # another subject claiming s.patel@trust.example
    assert r.status_code == 403 and "another sign-in" in r.text


def test_a_local_password_account_is_never_opened_by_the_provider_alone(sso):
    """An SSO-only account has no password: the password form never lets it in."""
    import requests

    assert sso.flow("m.khan")[2].status_code == 200
    r = requests.post(f"{sso.url}/api/v1/login", json={"username": "m.khan", "password": "not-a-real-password"},
                      timeout=10)
    assert r.status_code == 401


def test_state_is_single_use_and_bound_to_its_browser(sso):
    import requests

    session, callback, r = sso.flow("m.khan")
    assert r.status_code == 200
    again = session.get(callback, allow_redirects=False, timeout=10)
    assert again.status_code == 403 and "expired or was already used" in again.text
    # A callback URL carried to another browser (login CSRF) does not sign that browser in.
    s = requests.Session()
    first = s.get(f"{sso.url}/auth/oidc/login", allow_redirects=False, timeout=10)
    form = s.get(first.headers["location"], timeout=10)
    action = re.search(r'action="([^"]+)"', form.text).group(1).replace("&amp;", "&")
    back = s.post(urljoin(first.headers["location"], action), data={"username": "m.khan", "password": IDP_PASSWORD},
                  allow_redirects=False, timeout=10)
    victim = requests.Session()
    r = victim.get(back.headers["location"], allow_redirects=False, timeout=10)
    assert r.status_code == 403 and "another browser" in r.text and "classroom_session" not in victim.cookies


@pytest.mark.parametrize("column, why", [("nonce", "could not be checked"), ("code_verifier", "could not be checked")])
def test_a_changed_nonce_or_pkce_verifier_fails(sso, column, why):
    """The provider's signed nonce must match ours; its code needs our PKCE verifier."""
    def tamper(store):
        store.execute(f"UPDATE oidc_flows SET {column} = ?", ("x" * 43,))

    session, _, r = sso.flow("m.khan", tamper=tamper)
    assert r.status_code == 403 and why in r.text and "classroom_session" not in session.cookies


def test_failed_sign_ins_are_throttled_by_address(sso):
    import requests

    answers = [requests.get(f"{sso.url}/auth/oidc/callback?state=forged&code=x", allow_redirects=False,
                            timeout=10).status_code for _ in range(7)]
    assert answers[:5] == [403] * 5 and answers[-1] == 429
    assert "login.throttled" in {e["action"] for e in sso.store.list_audit()}


# --------------------------------------------------------------------------- the settings file


def test_settings_file_errors_name_file_line_and_key(tmp_path):
    from server.http.oidc import OidcSettingsInvalid, load_oidc_settings

    path = tmp_path / "oidc.yaml"
    path.write_text("issuer: http://idp.example\nclient_id: x\nredirect_url: https://c/auth/oidc/callback\n"
                    "groups:\n  g1: {site: penny-acres, role: dls}\n  g2: {site: '*', role: dsl}\nscope: [openid]\n")
    with pytest.raises(OidcSettingsInvalid) as err:
        load_oidc_settings(path)
    assert str(err.value).startswith(f"{path}:1: issuer:") and "(+3 more" in str(err.value)  # the CLI's line
    text = "\n".join(str(e) for e in err.value.errors)
    assert f"{path}:1: issuer:" in text and "https://" in text
    assert f"{path}:5: groups.g1" in text and "did you mean 'dsl'" in text
    assert f"{path}:6: groups.g2" in text
    assert f"{path}:7: scope: unknown key (did you mean 'scopes'?)" in text


def test_groups_map_to_schools_and_are_replaced_at_each_sign_in(sqlite_store):
    """A leaver moved out of a group loses that school at the next sign-in; a school an
    admin granted locally stays."""
    from server.http.oidc import GroupGrant, OidcLogin, OidcSettings, sign_in

    settings = OidcSettings(issuer="https://idp.example", client_id="c", redirect_url="https://c/cb",
                            groups={"a": GroupGrant(site="penny-acres", role="teacher"),
                                    "b": GroupGrant(site="hilltop", role="technician")})
    login = OidcLogin(settings)
    claims = {"iss": "https://idp.example", "sub": "s1", "preferred_username": "j.doe", "groups": ["a", "b"]}
    sign_in(sqlite_store, login.identity(claims))
    assert sqlite_store.memberships("j.doe") == {"penny-acres": "teacher", "hilltop": "technician"}
    sqlite_store.grant_site("j.doe", "oak-lane", "dsl")  # given by an admin, not by the provider
    sign_in(sqlite_store, login.identity({**claims, "groups": ["a"]}))
    assert sqlite_store.memberships("j.doe") == {"penny-acres": "teacher", "oak-lane": "dsl"}
